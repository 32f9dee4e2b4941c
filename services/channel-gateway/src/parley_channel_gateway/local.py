"""How `make run` starts the gateway: the gRPC API, the webhook HTTP process and the outbound worker."""

from __future__ import annotations

from parley_kit.local.spec import GATEWAY_HTTP_PORT, PORTS, LocalProcess, LocalService

# Local development only: a fixed Fernet key (so secrets stored under .parley/ stay readable across runs),
# and a Meta app secret / verify token for trying webhooks by hand. Production sets its own.
_DEV_ENV = {
    "PARLEY_CHANNEL_GATEWAY_ENCRYPTION_KEY": "bG9jYWwtZGV2LW9ubHktbm90LWEtcmVhbC1rZXkhISE=",
    "PARLEY_CHANNEL_GATEWAY_META_APP_SECRET": "local-dev-app-secret",
    "PARLEY_CHANNEL_GATEWAY_META_VERIFY_TOKEN": "local-dev-verify-token",
    "PARLEY_CHANNEL_GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{GATEWAY_HTTP_PORT}",
}

LOCAL = LocalService(
    name="channel-gateway",
    package="parley_channel_gateway",
    grpc_port=PORTS["channel-gateway"][0],
    metrics_port=PORTS["channel-gateway"][1],
    processes=(
        LocalProcess("serve", env=dict(_DEV_ENV)),
        LocalProcess("web", env={**_DEV_ENV, "PARLEY_CHANNEL_GATEWAY_HTTP_WORKERS": "1"}, http_port=GATEWAY_HTTP_PORT),
        # The worker serves only gRPC health; it must not take the API's port.
        LocalProcess("worker", env={**_DEV_ENV, "PARLEY_GRPC_PORT": "0"}),
    ),
    order=40,
)
