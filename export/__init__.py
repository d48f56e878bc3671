"""collfm2-edge export: the PyTorch reference, checkpoint I/O, ONNX export and TensorRT engines.

Heavy imports (torch, transformers) happen in the submodules, not here, so ``python -m export
--help`` and ``--dry-run`` answer quickly.
"""

__version__ = "0.1.0"
