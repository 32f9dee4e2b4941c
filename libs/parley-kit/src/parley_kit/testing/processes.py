"""Services as real processes for tests: `python -m <package> serve` with an environment, SERVING-checked.

`WorkspaceProcess` is the real workspace service (its own database, the test signing key) that services
checking assignees talk to; `WorkspaceAdmin` makes the spaces, members and teams a test needs.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from parley.workspace.v1 import auth_service_pb2, auth_service_pb2_grpc, resources_pb2
from parley.workspace.v1 import space_service_pb2 as sp
from parley.workspace.v1 import space_service_pb2_grpc as sp_grpc
from parley.workspace.v1 import team_service_pb2 as tm
from parley.workspace.v1 import team_service_pb2_grpc as tm_grpc
from parley.workspace.v1 import user_service_pb2 as us
from parley.workspace.v1 import user_service_pb2_grpc as us_grpc

from parley_kit.auth import TokenIssuer, jwks
from parley_kit.grpc_client import create_channel
from parley_kit.local.servers import free_port

if TYPE_CHECKING:
    from parley_kit.auth import SigningKey


class ServiceProcess:
    """`python -m <package> serve` on 127.0.0.1:<port>; `start()` waits until it reports SERVING."""

    def __init__(self, package: str, env: dict[str, str], port: int, log: Path) -> None:
        self.package = package
        self.env = env
        self.port = port
        self.target = f"127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Self:
        out = self.log.open("ab")
        command = [sys.executable, "-m", self.package, "serve"]
        self.proc = subprocess.Popen(command, env=self.env, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.package} exited with {self.proc.returncode}; see {self.log}")
            try:
                with grpc.insecure_channel(self.target) as ch:
                    reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return self
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.package} did not become SERVING; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def service_env(name: str, database_url: str, nats_url: str, key: SigningKey, port: int) -> dict[str, str]:
    """The environment every test service process starts from."""
    return {
        **os.environ,
        "PARLEY_SERVICE_NAME": name,
        "PARLEY_DATABASE_URL": database_url,
        "PARLEY_NATS_URL": nats_url,
        "PARLEY_GRPC_HOST": "127.0.0.1",
        "PARLEY_GRPC_PORT": str(port),
        "PARLEY_METRICS_PORT": "0",
        "PARLEY_AUTH_JWKS": json.dumps(jwks(key)),
    }


class WorkspaceProcess(ServiceProcess):
    """The real workspace service, with an organization bootstrapped for the tests' spaces."""

    def __init__(self, database_url: str, nats_url: str, key: SigningKey, log: Path) -> None:
        port = free_port()
        self.operator_secret = secrets.token_urlsafe(16)
        env = {
            **service_env("workspace", database_url, nats_url, key, port),
            "PARLEY_SIGNING_KEY": key.private_pem(),
            "PARLEY_SIGNING_KEY_ID": key.kid,
            "PARLEY_WORKSPACE_OPERATOR_SECRET": self.operator_secret,
            # Cheap password hashing: the tests' users never log in.
            "PARLEY_ARGON2_TIME_COST": "1",
            "PARLEY_ARGON2_MEMORY_KIB": "64",
            "PARLEY_ARGON2_PARALLELISM": "1",
        }
        super().__init__("parley_workspace", env, port, log)
        token = TokenIssuer(key).issue(space_id="*", role="system", subject="service:tests", ttl=86_400)
        self.admin = WorkspaceAdmin(self.target, token)

    def migrate(self) -> Self:
        subprocess.run([sys.executable, "-m", self.package, "migrate"], env=self.env, check=True, capture_output=True)
        return self

    def bootstrap(self) -> Self:
        """Make the organization every `WorkspaceAdmin.space()` lives in (once per process)."""
        with grpc.insecure_channel(self.target) as ch:
            reply = auth_service_pb2_grpc.AuthServiceStub(ch).Bootstrap(
                auth_service_pb2.BootstrapRequest(
                    operator_secret=self.operator_secret,
                    organization_name=f"Tests {uuid.uuid4().hex[:8]}",
                    space_name="First",
                    email=f"owner-{uuid.uuid4().hex[:8]}@example.com",
                    password=secrets.token_urlsafe(24),
                    force=True,
                ),
                timeout=30,
            )
        self.admin.organization_id = reply.organization_id
        return self


class WorkspaceAdmin:
    """Spaces, members and teams for tests, made with a platform token (each call its own channel, so it
    works from any test's event loop)."""

    def __init__(self, target: str, token: str) -> None:
        self.target = target
        self.token = token
        self.organization_id = ""

    async def _call(self, stub: Any, method: str, request: Any) -> Any:
        async with create_channel(self.target, token=self.token, timeout=10, max_attempts=2) as channel:
            return await getattr(stub(channel), method)(request)

    async def space(self) -> str:
        """A new space of the tests' organization."""
        request = sp.CreateSpaceRequest(organization_id=self.organization_id, name=f"Space {uuid.uuid4().hex[:10]}")
        return str((await self._call(sp_grpc.SpaceServiceStub, "CreateSpace", request)).space.id)

    async def member(self, space_id: str, display_name: str = "") -> str:
        """A new user, agent of the space; their id."""
        request = us.InviteUserRequest(
            space_id=space_id,
            email=f"agent-{uuid.uuid4().hex[:10]}@example.com",
            display_name=display_name,
            role=resources_pb2.SPACE_ROLE_AGENT,
        )
        return str((await self._call(us_grpc.UserServiceStub, "InviteUser", request)).user.id)

    async def team(self, space_id: str) -> str:
        request = tm.CreateTeamRequest(space_id=space_id, name=f"Team {uuid.uuid4().hex[:10]}")
        return str((await self._call(tm_grpc.TeamServiceStub, "CreateTeam", request)).team.id)

    async def remove_member(self, space_id: str, user_id: str) -> None:
        request = sp.RemoveSpaceMemberRequest(space_id=space_id, user_id=user_id)
        await self._call(sp_grpc.SpaceServiceStub, "RemoveSpaceMember", request)

    async def add_member(self, space_id: str, user_id: str) -> None:
        request = sp.AddSpaceMemberRequest(space_id=space_id, user_id=user_id, role=resources_pb2.SPACE_ROLE_AGENT)
        await self._call(sp_grpc.SpaceServiceStub, "AddSpaceMember", request)

    async def delete_team(self, team_id: str) -> None:
        await self._call(tm_grpc.TeamServiceStub, "DeleteTeam", tm.DeleteTeamRequest(team_id=team_id))
