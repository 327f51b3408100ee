"""``arbup db ...``: the records store's schema migrations.

The database is the one every other command uses: ``--url``, else ``ARBUP_DB_URL``,
else the SQLite file ``arbup.db`` in ``ARBUP_STATE_DIR`` (default ``.arbup``).
URLs are printed without their password.

Exit codes: 0 done (``current --check``: at head), 1 ``current --check`` found the
database behind, 2 refused (an invalid URL, a database a newer arbup migrated),
3 the database could not be reached.
"""

from __future__ import annotations

import argparse
import json

from alembic.util.exc import CommandError
from sqlalchemy.exc import ArgumentError, OperationalError, ProgrammingError

from arbup.records.store import RecordsStore, url_from_env

EXIT_BEHIND = 1


def _open(args: argparse.Namespace) -> RecordsStore:
    try:
        return RecordsStore(args.url or url_from_env())
    except ArgumentError as exc:
        raise ValueError(f"the database URL is not valid: {exc}") from None
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"no driver {exc.name!r} for that URL; PostgreSQL URLs start with "
            "postgresql+psycopg://"
        ) from None


def _reachable(fn):
    """The database's connection errors as 'cannot reach' (exit code 3), with the
    URL's password masked."""

    async def run(args: argparse.Namespace) -> int:
        store = _open(args)
        try:
            return fn(args, store)
        except OperationalError as exc:
            raise ConnectionError(f"{store.display_url}: {exc.orig}") from None
        except ProgrammingError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise ValueError(
                f"{store.display_url}: the database refused: {first} (check the URL's "
                "database, schema and search_path: the schema must exist)"
            ) from None
        except CommandError as exc:
            raise ValueError(
                f"{store.display_url}: the migration history cannot be read: {exc} "
                "(the alembic_version table should hold one row)"
            ) from None
        finally:
            store.dispose()

    run.__doc__ = fn.__doc__
    return run


def _revision_line(state) -> str:
    if state.current is None:
        what = "tables made before migrations" if state.legacy else "empty database"
        return f"none ({what})"
    if not state.known:
        return f"{state.current} (unknown to this arbup)"
    return state.current


def _head_line(state) -> str:
    if state.at_head:
        return f"{state.head} (at head)"
    if not state.known:
        return f"{state.head} (the database is newer: use the arbup that migrated it)"
    if state.legacy:
        return f"{state.head} (behind: `arbup db upgrade` stamps and upgrades it)"
    return f"{state.head} (behind: run `arbup db upgrade`)"


def cmd_upgrade(args: argparse.Namespace, store: RecordsStore) -> int:
    result = store.create_schema()
    before, after = result.before, result.after
    print(f"records store: {store.display_url}")
    if not result.changed:
        print(f"already at revision {after.current} (head); nothing to do")
        return 0
    if before.legacy:
        print("tables made before migrations found: stamped at the initial revision")
    else:
        print(f"upgraded from revision {before.current or 'none (empty database)'}")
    print(f"now at revision {after.current} (head)")
    return 0


def cmd_current(args: argparse.Namespace, store: RecordsStore) -> int:
    state = store.schema_state()
    if args.json:
        print(
            json.dumps(
                {
                    "url": store.display_url,
                    "revision": state.current,
                    "head": state.head,
                    "atHead": state.at_head,
                    "legacy": state.legacy,
                    "known": state.known,
                }
            )
        )
    else:
        print(f"records store: {store.display_url}")
        print(f"revision:      {_revision_line(state)}")
        print(f"head:          {_head_line(state)}")
    if args.check and not state.at_head:
        return EXIT_BEHIND
    return 0


async def cmd_history(args: argparse.Namespace) -> int:
    from arbup.records import migrate

    head = migrate.head()
    for revision, follows, title in migrate.history():
        mark = " (head)" if revision == head else ""
        after = f", after {follows}" if follows else ""
        print(f"{revision}{mark}{after}: {' '.join(title.split())}")
    return 0


def add_parsers(sub) -> None:
    db = sub.add_parser("db", help="the records store's schema migrations")
    commands = db.add_subparsers(dest="db_command", required=True)

    def url_flag(p) -> None:
        p.add_argument(
            "--url",
            help="database URL (default: $ARBUP_DB_URL, else the SQLite file in "
            "$ARBUP_STATE_DIR); prefer the variable, a --url is visible to "
            "other users of the machine",
        )

    p = commands.add_parser(
        "upgrade",
        help="bring the schema to the newest revision (idempotent)",
        description="Apply the migrations the database lacks, up to the newest "
        "revision. A database whose tables were made before migrations is stamped "
        "at the initial revision first. Safe to run again, and from several "
        "machines at once.",
    )
    url_flag(p)
    p.set_defaults(run=_reachable(cmd_upgrade))

    p = commands.add_parser(
        "current", help="the database's revision and whether it is at head"
    )
    url_flag(p)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--check",
        action="store_true",
        help=f"exit {EXIT_BEHIND} unless the database is at the newest revision",
    )
    p.set_defaults(run=_reachable(cmd_current))

    p = commands.add_parser(
        "history", help="the revisions this arbup knows, newest first"
    )
    p.set_defaults(run=cmd_history)
