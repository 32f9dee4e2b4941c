"""How `make run` starts the workspace service: first (others verify tokens it issues)."""

from __future__ import annotations

import os

from parley_kit.local.spec import PORTS, LocalProcess, LocalService

# For the local installation only: the operator secret `parley admin bootstrap` needs, unless the
# operator exported PARLEY_OPERATOR_SECRET (or PARLEY_WORKSPACE_OPERATOR_SECRET) before `make run`.
LOCAL_OPERATOR_SECRET = "parley-local-operator-secret"

LOCAL = LocalService(
    name="workspace",
    package="parley_workspace",
    grpc_port=PORTS["workspace"][0],
    metrics_port=PORTS["workspace"][1],
    processes=(
        LocalProcess(
            env={
                "PARLEY_WORKSPACE_OPERATOR_SECRET": os.environ.get("PARLEY_WORKSPACE_OPERATOR_SECRET")
                or os.environ.get("PARLEY_OPERATOR_SECRET")
                or LOCAL_OPERATOR_SECRET
            }
        ),
    ),
    order=10,
)
