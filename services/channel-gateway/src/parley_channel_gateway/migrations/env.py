from parley_kit.db import alembic_env

from parley_channel_gateway.models import metadata

alembic_env(metadata)
