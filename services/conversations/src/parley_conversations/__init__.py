"""Parley's conversations service: the inbox."""
