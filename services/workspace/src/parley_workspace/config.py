"""Settings of the workspace service (environment prefix PARLEY_)."""

from __future__ import annotations

from pathlib import Path

from parley_kit.settings import ServiceSettings
from pydantic import Field, ValidationInfo, field_validator


class Settings(ServiceSettings):
    """The kit's settings plus token signing, login protection and the operator secret."""

    service_name: str = "workspace"
    signing_key_file: Path | None = Field(
        default=None, description="PEM file of the Ed25519 key tokens are signed with"
    )
    signing_key: str = Field(default="", description="The signing key's PEM inline (instead of the file)")
    signing_key_id: str = Field(
        default="", validate_default=True, description="Key id (kid) of the signing key, published in the JWKS"
    )
    workspace_operator_secret: str = Field(
        default="", description="Secret the operator gives to Bootstrap; empty disables Bootstrap"
    )
    access_token_ttl_seconds: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86_400, ge=300)
    invite_ttl_seconds: int = Field(default=7 * 86_400, ge=300)
    login_lockout_threshold: int = Field(
        default=5, ge=1, le=100, description="Failed logins for one email before each further failure locks it"
    )
    login_lockout_base_seconds: float = Field(default=2.0, gt=0, description="First lock; doubles with each failure")
    login_lockout_max_seconds: float = Field(default=900.0, gt=0)
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_kib: int = Field(default=65_536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)

    @field_validator("signing_key_id")
    @classmethod
    def _signing_key_given(cls, kid: str, info: ValidationInfo) -> str:
        # Reported under PARLEY_SIGNING_KEY_ID (declared after the key fields, so they are in info.data).
        if not info.data.get("signing_key") and info.data.get("signing_key_file") is None:
            raise ValueError(
                "set PARLEY_SIGNING_KEY_FILE (or PARLEY_SIGNING_KEY) to the Ed25519 PEM key tokens are signed with"
            )
        if not kid:
            raise ValueError("set PARLEY_SIGNING_KEY_ID, the key id published with the public key")
        return kid

    def signing_key_pem(self) -> str:
        if self.signing_key:
            return self.signing_key
        assert self.signing_key_file is not None
        return self.signing_key_file.read_text()
