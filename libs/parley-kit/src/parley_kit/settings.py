"""Settings from environment variables, validated at boot.

Every service subclasses `ServiceSettings`; `load_settings()` turns a validation error
into one clear message naming each missing or malformed variable, and exits.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)


class ServiceSettings(BaseSettings):
    """Settings every Parley service shares (environment prefix PARLEY_)."""

    model_config = SettingsConfigDict(env_prefix="PARLEY_", extra="ignore", frozen=True)

    service_name: str = Field(description="Name in logs, metrics and traces")
    database_url: str = Field(
        pattern=r"^postgresql(\+asyncpg)?://", description="SQLAlchemy URL of the service's own database"
    )
    nats_url: str = Field(default="nats://127.0.0.1:4222", pattern=r"^(nats|tls)://")
    grpc_host: str = "0.0.0.0"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    metrics_port: int = Field(default=9100, ge=0, le=65535, description="Prometheus /metrics; 0 turns it off")
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    shutdown_grace_seconds: float = Field(default=10.0, gt=0)
    stream_replicas: int = Field(default=1, ge=1, le=5, description="JetStream replicas for this service's streams")
    auth_jwks: str = Field(default="", description="Inline JWKS (JSON) of the token verification keys")
    auth_jwks_file: Path | None = Field(default=None, description="JWKS file, re-read when it changes")
    service_token: str = Field(default="", description="This service's own token for calling other services")
    workspace_addr: str = Field(
        default="", description="host:port of the workspace service; when set, API keys are accepted (verified there)"
    )


class AssigneeSettings(ServiceSettings):
    """Settings of a service that assigns users and teams, which it checks with the workspace service
    (`parley_kit.directory`). Without PARLEY_WORKSPACE_ADDR and PARLEY_SERVICE_TOKEN the service refuses to
    start, unless PARLEY_ASSIGNEE_CHECK=off says to accept any id."""

    assignee_check: bool = Field(
        default=True,
        validate_default=True,
        description="Check that an assigned user is a member of the space and a team one of its teams "
        "(off: accept any id; only where no workspace service runs)",
    )
    assignee_cache_seconds: float = Field(
        default=10.0, ge=0, le=300, description="How long a yes from the workspace is reused (removals drop it)"
    )
    assignee_timeout_seconds: float = Field(
        default=2.0, gt=0, le=30, description="Deadline of one workspace lookup; past it the assignment is UNAVAILABLE"
    )
    assignee_release_batch: int = Field(
        default=500, ge=1, le=10_000, description="Assignments released per transaction when a member or team goes"
    )

    @field_validator("assignee_check")
    @classmethod
    def _workspace_known(cls, check: bool, info: ValidationInfo) -> bool:
        # Reported under PARLEY_ASSIGNEE_CHECK (workspace_addr, a field of the base class, is validated first).
        if check and not info.data.get("workspace_addr"):
            raise ValueError(
                "set PARLEY_WORKSPACE_ADDR (the workspace service, which says who may be assigned), "
                "or set PARLEY_ASSIGNEE_CHECK=off to accept any user and team id unchecked"
            )
        if check and not info.data.get("service_token"):
            raise ValueError("set PARLEY_SERVICE_TOKEN (this service's platform token, which the workspace checks)")
        return check


def load_settings(cls: type[S], **overrides: object) -> S:
    """Build settings from the environment, or exit with a readable list of problems."""
    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = []
        for err in exc.errors():
            name = prefix + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"  {name}: {err['msg']}")
        sys.stderr.write(f"invalid configuration for {cls.__name__}:\n" + "\n".join(lines) + "\n")
        raise SystemExit(2) from None
