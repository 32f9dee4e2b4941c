"""`make bench`: run every bench/*_bench.py module's `main()` in turn (or those named).

Usage: python -m bench [NAME ...]   e.g. python -m bench gateway contacts
       python -m bench e2e --seconds 60 --rate 500   (one benchmark: the options after its name go to it)
Each benchmark starts its own servers on free ports and sends traffic only to 127.0.0.1.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    return sorted(m.name.removesuffix("_bench") for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                  if m.name.endswith("_bench"))  # fmt: skip


def main(argv: list[str]) -> int:
    first_option = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    argv, options = argv[:first_option], argv[first_option:]
    if options and len(argv) != 1:
        print("options go to one benchmark: python -m bench NAME [OPTIONS]", file=sys.stderr)
        return 2
    names = argv or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {available()}", file=sys.stderr)
        return 2
    for name in names:
        print(f"\n=== bench: {name} ===", flush=True)
        importlib.import_module(f"bench.{name}_bench").main(options)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
