"""`make run`'s launcher brings every installed service to SERVING and stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from parley_cli.commands.status import installed_services


def test_launcher_brings_every_service_to_serving_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    data = tmp_path / "parley"
    proc = subprocess.Popen(
        [sys.executable, "-m", "parley_kit.local.launcher", "run", "--free-ports", "--data-dir", str(data)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (data / "addresses.json").exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "platform did not come up in time"
            time.sleep(0.5)
        addresses = json.loads((data / "addresses.json").read_text())
        status_env = {**env, **{k: v for k, v in addresses.items() if k.startswith("PARLEY_")}}
        out = subprocess.run(
            [sys.executable, "-m", "parley_cli", "status", "--json"], env=status_env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stdout + out.stderr
        rows = json.loads(out.stdout)
        assert {r["service"] for r in rows} == {s.name for s in installed_services()}
        assert all(r["status"] == "SERVING" for r in rows), rows
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "Parley stopped." in output
