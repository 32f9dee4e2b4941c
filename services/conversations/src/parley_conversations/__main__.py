"""`python -m parley_conversations serve|migrate`."""

from parley_kit.runtime import service_main

from parley_conversations.app import serve
from parley_conversations.config import Settings


def main() -> None:
    service_main("parley_conversations", Settings, serve)


if __name__ == "__main__":
    main()
