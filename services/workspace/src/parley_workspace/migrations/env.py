from parley_kit.db import alembic_env
from parley_workspace.models import metadata

alembic_env(metadata)
