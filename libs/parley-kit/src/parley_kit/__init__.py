"""Parley shared kit: cross-cutting code used by every service."""
