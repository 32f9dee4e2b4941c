"""Pytest fixtures: real PostgreSQL and NATS JetStream, test tokens."""
