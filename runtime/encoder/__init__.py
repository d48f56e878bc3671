"""runtime/encoder."""
