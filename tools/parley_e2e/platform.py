"""The whole platform as `make run` starts it (`python -m parley_kit.local.launcher run --free-ports`), seen from
outside: its addresses, its local secrets, signed webhooks to the gateway's web process and gRPC stubs."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc

from parley_e2e.messenger import sign_meta

OPERATOR_SECRET = "e2e-operator-secret"
PASSWORD = "Correct-Horse-Battery-42"
META_PAGE_TOKEN = "EAAGe2etestpageaccesstoken0123456789"


class _Stub:
    """A gRPC stub whose calls carry the bearer token (and a default deadline)."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)

        def call(request: Any, *, timeout: float = 15.0, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
            return method(request, timeout=timeout, metadata=(*self._metadata, *metadata))

        return call


@dataclass
class SpaceClient:
    """An owner's view of one space: its token and stubs of every service."""

    platform: Platform
    token: str
    space_id: str
    user_id: str = ""

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def stub(self, service: str, stub_class: Any) -> Any:
        return _Stub(stub_class(self.platform.channel(service)), self.metadata)

    @property
    def conversations(self) -> Any:
        from parley.conversations.v1 import conversations_service_pb2_grpc as g

        return self.stub("conversations", g.ConversationsServiceStub)

    @property
    def contacts(self) -> Any:
        from parley.contacts.v1 import contacts_service_pb2_grpc as g

        return self.stub("contacts", g.ContactsServiceStub)

    @property
    def channels(self) -> Any:
        from parley.channel_gateway.v1 import channel_service_pb2_grpc as g

        return self.stub("channel-gateway", g.ChannelServiceStub)

    def connect_messenger(self, page_id: str, name: str = "") -> Any:
        """ConnectChannel for a Facebook Page; returns the Channel."""
        from parley.channel_gateway.v1 import channel_service_pb2 as pb

        request = pb.ConnectChannelRequest(
            space_id=self.space_id,
            name=name or f"Page {page_id}",
            messenger=pb.MessengerCredentials(page_id=page_id, page_access_token=META_PAGE_TOKEN),
        )
        return self.channels.ConnectChannel(request).channel


@dataclass
class Platform:
    """A launcher subprocess and what it wrote into its data directory."""

    data: Path
    proc: subprocess.Popen[bytes] | None
    addresses: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)
    _http: http.client.HTTPConnection | None = None

    # -- life -----------------------------------------------------------------------------------------------------

    @classmethod
    def start(cls, data: Path, *, env: dict[str, str] | None = None, timeout: float = 240.0) -> Platform:
        """Start the launcher with a clean environment (no PARLEY_* from the caller) plus `env`; return once every
        service is SERVING and the gateway's web process is ready."""
        data.mkdir(parents=True, exist_ok=True)
        os.chmod(data, 0o755)  # PostgreSQL runs as another user when we are root: it must traverse this
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "OTEL_"))}
        full_env = {"PARLEY_WORKSPACE_OPERATOR_SECRET": OPERATOR_SECRET, **base, **(env or {})}
        log = open(data / "launcher.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "parley_kit.local.launcher", "run", "--free-ports", "--data-dir", str(data)],
            env=full_env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        platform = cls(data, proc)
        try:
            platform._wait_up(timeout)
        except BaseException:
            platform.stop()
            raise
        return platform

    @classmethod
    def attach(cls, data: Path) -> Platform:
        """A platform another process started (e.g. `python -m parley_kit.local.launcher run --free-ports
        --data-dir DIR` in a terminal, with the fake Graph API's URL): for iterating on tests without booting."""
        platform = cls(data, None)
        platform._wait_up(10)
        return platform

    def _wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        addresses = self.data / "addresses.json"
        while not addresses.exists():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the launcher exited with {self.proc.returncode}:\n{self.launcher_log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the platform did not come up in {timeout}s:\n{self.launcher_log()}")
            time.sleep(0.3)
        self.addresses = json.loads(addresses.read_text())
        self.secrets = json.loads((self.data / "secrets.json").read_text())
        while True:  # the web process is not part of the launcher's SERVING check
            try:
                with urllib.request.urlopen(self.web_url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway's web process is not ready")
            time.sleep(0.2)

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM the launcher (it stops the services, then NATS and PostgreSQL); its exit code (0 when
        attached: an attached platform is left running)."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def launcher_log(self) -> str:
        path = self.data / "launcher.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def logs(self) -> Iterator[tuple[str, str]]:
        """(file name, text) of every service process's log."""
        for path in sorted(self.data.glob("*-*.log")):
            yield path.name, path.read_text(errors="replace")

    # -- addresses --------------------------------------------------------------------------------------------

    def grpc_address(self, service: str) -> str:
        return str(self.addresses[f"PARLEY_{service.upper().replace('-', '_')}_ADDR"])

    def channel(self, service: str) -> grpc.Channel:
        if service not in self._channels:
            self._channels[service] = grpc.insecure_channel(self.grpc_address(service))
        return self._channels[service]

    @property
    def processes(self) -> list[dict[str, str]]:
        return list(self.addresses["processes"])

    @property
    def web_url(self) -> str:
        return next(p["http"] for p in self.processes if p["service"] == "channel-gateway" and p["process"] == "web")

    @property
    def nats_url(self) -> str:
        return str(self.addresses["nats"])

    @property
    def app_secret(self) -> str:
        return self.secrets["PARLEY_CHANNEL_GATEWAY_META_APP_SECRET"]

    # -- webhooks -------------------------------------------------------------------------------------------------

    def post_webhook(self, path: str, body: bytes, *, signature: str | None = None) -> tuple[int, Any]:
        """POST a Meta webhook signed with the local app secret (keep-alive); (status, JSON answer)."""
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": signature if signature is not None else sign_meta(body, self.app_secret),
        }
        for attempt in range(2):
            if self._http is None:
                parts = urlsplit(self.web_url)
                self._http = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=15)
            try:
                self._http.request("POST", path, body=body, headers=headers)
                response = self._http.getresponse()
                data = response.read()
                return response.status, json.loads(data) if data else None
            except (ConnectionError, http.client.HTTPException):
                self._http.close()
                self._http = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    # -- identities -----------------------------------------------------------------------------------------------

    def bootstrap(self, organization: str, space: str, email: str, *, force: bool = False) -> SpaceClient:
        """AuthService.Bootstrap with the operator secret: a new organization, space and owner; the owner's client."""
        from parley.workspace.v1 import auth_service_pb2 as pb
        from parley.workspace.v1 import auth_service_pb2_grpc as g

        reply = g.AuthServiceStub(self.channel("workspace")).Bootstrap(
            pb.BootstrapRequest(
                operator_secret=OPERATOR_SECRET,
                organization_name=organization,
                space_name=space,
                email=email,
                password=PASSWORD,
                display_name="Dana Owner",
                force=force,
            ),
            timeout=30,
        )
        return SpaceClient(self, reply.tokens.access_token, reply.space_id, reply.user_id)

    def system_client(self, space_id: str) -> SpaceClient:
        """A platform-wide `system` token (as a workflow or another service holds), acting on `space_id`."""
        from parley_kit.auth import SigningKey, TokenIssuer

        keys = self.data / "keys"
        kid = (keys / "signing-key.kid").read_text().strip()
        key = SigningKey.from_pem(kid, (keys / "signing-key.pem").read_text())
        token = TokenIssuer(key).issue(space_id="*", role="system", subject="service:e2e-workflow", ttl=3600)
        return SpaceClient(self, token, space_id)
