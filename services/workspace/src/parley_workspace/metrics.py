"""Business metrics of the workspace service (the kit's metrics cover RPCs, events and the outbox)."""

from __future__ import annotations

from prometheus_client import Counter

LOGINS = Counter(
    "parley_workspace_logins_total",
    "Login attempts by outcome: ok, failed (wrong email or password), locked (refused during a lockout)",
    ["outcome"],
)
API_KEY_VERIFICATIONS = Counter(
    "parley_workspace_api_key_verifications_total",
    "API key verifications by outcome: ok, refused",
    ["outcome"],
)
TOKENS_ISSUED = Counter(
    "parley_workspace_tokens_issued_total",
    "Access tokens issued, by how: login, refresh, switch_space, bootstrap",
    ["how"],
)
