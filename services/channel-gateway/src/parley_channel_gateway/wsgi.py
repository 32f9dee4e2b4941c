"""WSGI entry point for gunicorn: `parley_channel_gateway.wsgi:make_app()`."""

from __future__ import annotations

from flask import Flask
from parley_kit.settings import load_settings

from parley_channel_gateway.config import Settings
from parley_channel_gateway.webapp import create_app


def make_app() -> Flask:
    return create_app(load_settings(Settings))
