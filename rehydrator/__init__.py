"""rehydrator."""
