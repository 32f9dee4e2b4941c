"""`make run`'s launcher brings every installed service to SERVING (and, in the `platform` fixture's teardown,
stops everything cleanly: exit code 0 and "Parley stopped.")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from parley_cli.commands.status import installed_services
from parley_e2e import Platform


def test_launcher_brings_every_service_to_serving(platform: Platform) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    status_env = {**env, **{k: v for k, v in platform.addresses.items() if k.startswith("PARLEY_")}}
    out = subprocess.run(
        [sys.executable, "-m", "parley_cli", "status", "--json"], env=status_env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads(out.stdout)
    assert {r["service"] for r in rows} == {s.name for s in installed_services()}
    assert all(r["status"] == "SERVING" for r in rows), rows
