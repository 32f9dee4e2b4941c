"""`make run` finds the workspace service and starts it first."""

from __future__ import annotations

from importlib.metadata import entry_points

from parley_kit.local.spec import PORTS


def test_workspace_is_declared_to_the_launcher_and_starts_first() -> None:
    (found,) = [ep.load() for ep in entry_points(group="parley.services") if ep.name == "workspace"]
    assert (found.name, found.package, found.grpc_port) == ("workspace", "parley_workspace", PORTS["workspace"][0])
    others = [ep.load() for ep in entry_points(group="parley.services") if ep.name != "workspace"]
    assert all(found.order < other.order for other in others)
    assert found.processes[0].env["PARLEY_WORKSPACE_OPERATOR_SECRET"]  # bootstrap works under make run
