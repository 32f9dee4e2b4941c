"""Local NATS and PostgreSQL servers and the `make run` launcher."""
