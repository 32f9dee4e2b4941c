"""Parley's channel gateway: turns provider webhooks into canonical inbound events and sends outbound messages."""
