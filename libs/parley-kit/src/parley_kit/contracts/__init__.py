"""Contracts of shared streams: stream names, subjects and partitioning that several services import.

A producer and its consumers must agree on these without depending on each other's packages, so they
live here and nowhere else. Nothing but names, subject functions, stream specs and pure shared rules of the
channels (`messaging_window`) belongs in this package.
"""
