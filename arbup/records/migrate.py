"""Schema migrations of the records store, with Alembic, run from code.

The revisions ship inside the package (``arbup/records/migrations/versions``) and
are applied on a connection the caller opened, inside its transaction: no
``alembic.ini`` is read. The version table (``alembic_version``) sits next to the
tables, in the store's own schema on PostgreSQL.

A database made before the records store had migrations (its tables were created
with ``metadata.create_all``) has the tables but no version table. It is recognised
as such and stamped at the initial revision, after the initial tables it may lack
(the API's users, grants and keys came last) are created; later revisions then
apply as usual.

A change to ``arbup/records/schema.py`` needs a new revision: a file in
``migrations/versions`` whose ``down_revision`` is the current head, using
``op.batch_alter_table`` for what SQLite cannot alter in place.
``command.revision(alembic_config(conn), message, autogenerate=True, rev_id=...)``
on a database at head drafts one from the difference. The tests check that a
database upgraded to head has exactly ``schema.metadata``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# Alembic reports its plugins when imported and every look at the version table at
# INFO; what the records store changes is logged by the store itself. Left alone if
# configured explicitly.
if logging.getLogger("alembic").level == logging.NOTSET:
    logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from alembic.util import CommandError  # noqa: E402
from sqlalchemy import Connection, inspect  # noqa: E402
from sqlalchemy.engine import URL, make_url  # noqa: E402

from arbup.records.store import SchemaNotCurrent  # noqa: E402

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
INITIAL_REVISION = "0001"
VERSION_TABLE = "alembic_version"


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands against the migrations of this arbup."""

    current: str | None
    """The revision recorded in the database, None when none is."""
    head: str
    """The newest revision this arbup knows."""
    legacy: bool
    """Tables are there but no revision is recorded: made before migrations."""
    known: bool
    """``current`` is None or a revision of this arbup (not one of a newer one)."""

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    def describe(self) -> str:
        """Where it stands, to follow "the database is"."""
        if self.at_head:
            return f"at revision {self.current}, the head"
        if not self.known:
            return (
                f"at revision {self.current}, which this arbup does not know (its "
                f"head is {self.head}): a newer arbup migrated it"
            )
        if self.legacy:
            return (
                "without a recorded revision, its tables made before migrations "
                f"(head is {self.head})"
            )
        if self.current is None:
            return f"empty (head is {self.head})"
        return f"at revision {self.current}, behind the head {self.head}"


@dataclass(frozen=True)
class UpgradeResult:
    before: SchemaState
    after: SchemaState

    @property
    def changed(self) -> bool:
        return self.before.current != self.after.current


def alembic_config(
    connection: Connection | None = None, *, schema: str | None = None
) -> Config:
    """An Alembic configuration for the packaged migrations, built in code."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    config.attributes["schema"] = schema
    return config


@cache
def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    return script_directory().get_current_head()


def initial_tables() -> frozenset[str]:
    """The tables the initial revision creates."""
    return frozenset(script_directory().get_revision(INITIAL_REVISION).module.TABLES)


def history() -> list[tuple[str, str | None, str]]:
    """Every revision, newest first: (revision, the one it follows, its title)."""
    return [
        (rev.revision, rev.down_revision, (rev.doc or "").strip())
        for rev in script_directory().walk_revisions()
    ]


def state(conn: Connection, schema: str | None = None) -> SchemaState:
    current = _current(conn, schema)
    present = _present_tables(conn, schema)
    known = current is None or _is_known(current)
    return SchemaState(
        current=current,
        head=head(),
        legacy=current is None and bool(present & initial_tables()),
        known=known,
    )


def upgrade(
    conn: Connection, schema: str | None = None, *, name: str = "the database"
) -> UpgradeResult:
    """Bring the database to head on ``conn``, in its transaction (idempotent).

    The caller serializes concurrent upgrades (see ``RecordsStore.create_schema``).
    Raises SchemaNotCurrent for a database at a revision this arbup does not know
    (``name`` says which database in the message).
    """
    before = state(conn, schema)
    if not before.known:
        raise SchemaNotCurrent(
            f"{name} is {before.describe()}; run that arbup or a newer one"
        )
    config = alembic_config(conn, schema=schema)
    if before.legacy:
        missing = initial_tables() - _present_tables(conn, schema)
        if missing:
            # The initial revision creates only the tables that are not there yet.
            command.upgrade(config, INITIAL_REVISION)
        else:
            command.stamp(config, INITIAL_REVISION)
    if not before.at_head:
        command.upgrade(config, "head")
    return UpgradeResult(before, state(conn, schema))


def mask_url(url: str | URL) -> str:
    """The URL for messages: its password, also one given as a query parameter,
    replaced by ``***``."""
    parsed = make_url(url) if isinstance(url, str) else url
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


def _current(conn: Connection, schema: str | None) -> str | None:
    context = MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
    )
    return context.get_current_revision()


def _present_tables(conn: Connection, schema: str | None) -> set[str]:
    return set(inspect(conn).get_table_names(schema=schema))


def _is_known(revision: str) -> bool:
    try:
        return script_directory().get_revision(revision) is not None
    except CommandError:
        return False
