"""Two exception roots, as Polygraphy does it.

``UserError`` and its subclasses mean the input or the files are wrong: the message is one line
that says what to do, and CLIs print it without a traceback and exit 2. Anything else that
escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ImageError", "InputError", "ModelFilesError", "QueryError", "StoreError", "UserError"]


class UserError(Exception):
    """Root of every error caused by what the user passed in. ``str(e)`` is one line."""

    def __init__(self, message: str) -> None:
        # Keep the promise of a single line even when a library's message had newlines in it.
        super().__init__(" ".join(str(message).split()))


class InputError(UserError):
    """A bad image, page or query."""


class ImageError(InputError):
    """An image that cannot be decoded or cannot be processed (empty, truncated, bomb, ...)."""


class QueryError(InputError):
    """An empty or over-long query."""


class ModelFilesError(UserError):
    """A checkpoint or bundle directory that is missing, incomplete or inconsistent."""


class StoreError(UserError):
    """An index or collection that is missing, damaged, locked, or made with another bundle."""
