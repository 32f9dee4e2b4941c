from parley_contacts.models import metadata
from parley_kit.db import alembic_env

alembic_env(metadata)
