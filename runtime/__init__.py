"""collfm2-edge runtime: torch-free preprocessing, encoding and MaxSim for ColLFM2.

Imports only numpy, Pillow, tokenizers (and onnxruntime where graphs run); a test proves that it
imports with torch blocked.
"""

from .bundle.manifest import Bundle, open_bundle
from .encoder.model import ColLFM2
from .errors import ImageError, InputError, ModelFilesError, QueryError, UserError
from .preprocess.config import PreprocessConfig
from .preprocess.processor import ColLFM2Processor
from .scoring import score

__all__ = [
    "Bundle",
    "ColLFM2",
    "ColLFM2Processor",
    "ImageError",
    "InputError",
    "ModelFilesError",
    "PreprocessConfig",
    "QueryError",
    "UserError",
    "open_bundle",
    "score",
]
__version__ = "0.1.0"
