"""NATS JetStream: provisioning, publishing, consuming, outbox."""
