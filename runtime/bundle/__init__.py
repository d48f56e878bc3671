"""runtime/bundle."""
