"""runtime/preprocess."""
