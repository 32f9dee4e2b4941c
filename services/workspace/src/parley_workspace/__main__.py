"""`python -m parley_workspace serve|migrate`."""

from parley_kit.runtime import service_main

from parley_workspace.config import Settings
from parley_workspace.server import serve

if __name__ == "__main__":
    service_main("parley_workspace", Settings, serve)
