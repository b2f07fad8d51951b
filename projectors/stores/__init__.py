"""Store adapters, one module per store."""
