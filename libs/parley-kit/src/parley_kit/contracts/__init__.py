"""Contracts of shared streams: stream names, subjects and partitioning that several services import.

A producer and its consumers must agree on these without depending on each other's packages, so they
live here and nowhere else. Nothing but names, subject functions and stream specs belongs in this package.
"""
