"""Command groups, one module per service."""
