"""Service Dockerfiles: rendered from one template, and parsed for the checks in tests/deploy.

python -m parley_deploy.dockerfiles render contacts [--force]   # write services/contacts/Dockerfile
python -m parley_deploy.dockerfiles list                        # services that have a Dockerfile
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "docker" / "service.Dockerfile.template"

# What differs between services; everything else is the template.
SERVICE_OVERRIDES: dict[str, dict[str, str]] = {
    # web (gunicorn, HTTP 8080), worker (outbound sends) and serve (gRPC ChannelService): one image.
    "channel-gateway": {"PORTS": "8080 50051 9100", "DEFAULT_COMMAND": "web"},
}


def names(service: str) -> dict[str, str]:
    """The one name in its three spellings: folder, distribution, import package."""
    return {
        "SERVICE": service,
        "DIST": f"parley-{service}",
        "PACKAGE": "parley_" + service.replace("-", "_"),
        "PORTS": "50051 9100",
        "DEFAULT_COMMAND": "serve",
        **SERVICE_OVERRIDES.get(service, {}),
    }


def render(service: str) -> str:
    text = TEMPLATE.read_text()
    for key, value in names(service).items():
        text = text.replace(f"@{key}@", value)
    leftover = re.findall(r"@[A-Z_]+@", text)
    if leftover:
        raise ValueError(f"template placeholders without a value: {sorted(set(leftover))}")
    return text


def service_dockerfiles(root: Path = ROOT) -> dict[str, Path]:
    """services/<name>/Dockerfile for every service that has one."""
    return {p.parent.name: p for p in sorted((root / "services").glob("*/Dockerfile"))}


# ---- parsing -------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, COPY, RUN, USER, ...
    args: str  # the rest of the (joined) line
    line: int


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (enough for our checks)."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = number
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        joined = " ".join(part for part in buf if part)
        buf = []
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    return out


def stages(text: str) -> list[Stage]:
    result: list[Stage] = []
    for ins in parse(text):
        if ins.keyword == "FROM":
            parts = ins.args.split()
            parts = [p for p in parts if not p.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else ""
            result.append(Stage(base=parts[0], name=name))
        elif result:
            result[-1].instructions.append(ins)
    return result


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    dest: str
    from_stage: str | None
    line: int


def copies(stage: Stage) -> list[Copy]:
    out = []
    for ins in stage.instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = shlex.split(ins.args)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        out.append(Copy(tuple(paths[:-1]), paths[-1], from_stage, ins.line))
    return out


def entrypoint_module(stage: Stage) -> str | None:
    """`parley_x` from ENTRYPOINT ["python", "-m", "parley_x"] (exec form only)."""
    entry = stage.all("ENTRYPOINT")
    if not entry:
        return None
    import json

    argv = json.loads(entry[-1].args)
    if "-m" in argv:
        return argv[argv.index("-m") + 1]
    return None


def final_user(stage: Stage) -> str | None:
    users = stage.all("USER")
    return users[-1].args.strip() if users else None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m parley_deploy.dockerfiles")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="write services/<name>/Dockerfile from the template")
    r.add_argument("services", nargs="+")
    r.add_argument("--force", action="store_true", help="overwrite an existing Dockerfile")
    sub.add_parser("list", help="print the services that have a Dockerfile")
    args = parser.parse_args()
    if args.command == "list":
        for name in service_dockerfiles():
            print(name)
        return
    for service in args.services:
        target = ROOT / "services" / service / "Dockerfile"
        if target.exists() and not args.force:
            raise SystemExit(f"{target} exists; pass --force to overwrite it")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(service))
        print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()


def runnable(service: str, root: Path = ROOT) -> bool:
    """The service registers itself with the launcher (entry point group `parley.services`), i.e. it
    is meant to run as `python -m parley_<service>`; a service still being built may not yet."""
    import tomllib

    pyproject = root / "services" / service / "pyproject.toml"
    if not pyproject.exists():
        return False
    project = tomllib.loads(pyproject.read_text()).get("project", {})
    return bool(project.get("entry-points", {}).get("parley.services"))
