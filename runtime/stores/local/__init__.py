"""runtime/stores/local."""
