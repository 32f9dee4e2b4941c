"""Names of users for shortcut templates ({{user.name}}), asked of the workspace service and cached."""

from __future__ import annotations

import logging
import time

import grpc
from parley.workspace.v1 import user_service_pb2 as upb
from parley.workspace.v1 import user_service_pb2_grpc as upb_grpc
from parley_kit.grpc_client import create_channel

log = logging.getLogger(__name__)


class WorkspaceUsers:
    """UserService.GetUser with this service's platform token; a name is cached for `ttl` seconds."""

    def __init__(self, channel: grpc.aio.Channel, *, ttl: float = 300.0, timeout: float = 2.0) -> None:
        self._stub = upb_grpc.UserServiceStub(channel)
        self._ttl = ttl
        self._timeout = timeout
        self._cache: dict[str, tuple[float, str]] = {}

    @classmethod
    def connect(cls, target: str, token: str) -> WorkspaceUsers:
        return cls(create_channel(target, token=token, timeout=2.0))

    async def display_name(self, user_id: str) -> str:
        """The user's display name; empty when unknown or when the workspace service does not answer."""
        hit = self._cache.get(user_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        try:
            reply = await self._stub.GetUser(upb.GetUserRequest(user_id=user_id), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            log.warning("workspace GetUser(%s) failed: %s %s", user_id, exc.code().name, exc.details())
            return ""
        name = reply.user.display_name
        self._cache[user_id] = (time.monotonic() + self._ttl, name)
        return name
