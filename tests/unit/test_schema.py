"""The schema is only made by migrations, and commands check it against the right head."""

from sqlalchemy import create_engine, inspect

from testlab.db.models import Base
from testlab.db.session import SCHEMA_HEAD, SchemaOutOfDate, check_schema, head_revision, upgrade


def test_schema_head_constant_matches_the_migration_scripts():
    assert head_revision() == SCHEMA_HEAD


def test_migrations_create_exactly_the_models(tmp_path, lab_db):
    url = lab_db.settings.database_url
    try:
        check_schema(url)
        raise AssertionError("an empty database must be refused")
    except SchemaOutOfDate as error:
        assert "testlab init" in str(error)
    upgrade(url)
    upgrade(url)  # twice is harmless
    check_schema(url)
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with create_engine(url).connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert differences == [], differences
        tables = set(inspect(connection).get_table_names())
        assert {"hosts", "vms", "jobs", "steps", "tasks", "users", "events"} <= tables
