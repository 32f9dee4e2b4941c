"""Regenerate (or, with --check, verify) the Python code for every .proto under protos/.

The output goes to libs/parley-protos/src; `--check` generates into a temporary folder
and fails, naming the files, when the committed code differs.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
OUT = Path(__file__).resolve().parent / "src"


def generate(out: Path) -> None:
    """Run protoc with the Python, typing-stub and gRPC plugins into `out`."""
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--mypy_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generated_files(base: Path) -> set[str]:
    """Generated files under `base` (bytecode caches that importing the modules leaves are not ours)."""
    return {
        str(p.relative_to(base))
        for p in (base / "parley").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail on drift instead of writing")
    check = parser.parse_args().check
    if not check:
        shutil.rmtree(OUT / "parley", ignore_errors=True)
        OUT.mkdir(parents=True, exist_ok=True)
        generate(OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = generated_files(fresh), generated_files(OUT)
        drift = sorted(want ^ have)
        drift += sorted(f for f in want & have if not filecmp.cmp(fresh / f, OUT / f, shallow=False))
        if drift:
            print("generated code is out of date; run `make protos`:", *drift, sep="\n  ", file=sys.stderr)
            return 1
    print("generated code matches protos/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
