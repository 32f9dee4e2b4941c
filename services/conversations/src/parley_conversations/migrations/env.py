from parley_conversations.models import metadata
from parley_kit.db import alembic_env

alembic_env(metadata)
