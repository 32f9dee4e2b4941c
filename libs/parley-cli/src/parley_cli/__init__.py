"""The parley command-line interface."""
