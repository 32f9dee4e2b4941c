"""`python -m parley_contacts serve|migrate`."""

from parley_kit.runtime import service_main

from parley_contacts.config import Settings
from parley_contacts.server import serve

if __name__ == "__main__":
    service_main("parley_contacts", Settings, serve)
