"""How `make run` starts the gateway: the gRPC API, the webhook HTTP process and the outbound worker."""

from __future__ import annotations

from parley_kit.local.spec import GATEWAY_HTTP_PORT, PORTS, LocalProcess, LocalService

# The launcher makes the encryption key, Meta app secret and verify token once per installation and keeps
# them in .parley/secrets.json (read them there to sign webhooks by hand). Production sets its own.
_SECRETS = (
    "PARLEY_CHANNEL_GATEWAY_ENCRYPTION_KEY",
    "PARLEY_CHANNEL_GATEWAY_META_APP_SECRET",
    "PARLEY_CHANNEL_GATEWAY_META_VERIFY_TOKEN",
)

LOCAL = LocalService(
    name="channel-gateway",
    package="parley_channel_gateway",
    grpc_port=PORTS["channel-gateway"][0],
    metrics_port=PORTS["channel-gateway"][1],
    processes=(
        LocalProcess("serve"),
        LocalProcess("web", env={"PARLEY_CHANNEL_GATEWAY_HTTP_WORKERS": "1"}, http_port=GATEWAY_HTTP_PORT),
        # The worker serves only gRPC health; it must not take the API's port.
        LocalProcess("worker", env={"PARLEY_GRPC_PORT": "0"}),
    ),
    env={"PARLEY_CHANNEL_GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{GATEWAY_HTTP_PORT}"},
    secrets=_SECRETS,
    order=40,
)
