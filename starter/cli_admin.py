"""``arbup api``, ``arbup user ...`` and ``arbup key ...``: serving the HTTP API and
managing who may use it.

Users, grants and access keys live in the records store (``ARBUP_DB_URL`` or the
SQLite file in ``ARBUP_STATE_DIR``); the master key access-key secrets are derived
from is the file ``$ARBUP_API_MASTER_KEY_FILE`` (default
``<state dir>/api-master.key``), created on first use. See ``arbup.records.iam``.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import json
import socket
import sys

from arbup.inputs import TASK_QUEUE
from arbup.records import RecordsStore
from arbup.records.iam import (
    ALL,
    GLOBAL_PERMISSIONS,
    PERMISSIONS,
    IamError,
    IamStore,
    MasterKey,
    default_master_key_path,
)
from arbup.records.store import RecordsError

EXIT_REFUSED = 2


def _iam(*, master_key: bool = False) -> IamStore:
    store = RecordsStore.from_env()
    store.ensure_schema()
    key = MasterKey.load_or_create(default_master_key_path()) if master_key else None
    return IamStore(store, key)


def _refused(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_REFUSED


def _read_password(args: argparse.Namespace) -> str | None:
    if args.no_password:
        return None
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise IamError("no terminal to ask for the password; use --password-stdin")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise IamError("the passwords differ")
    return first


# -- arbup api -------------------------------------------------------------------------


async def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api import ApiSettings, create_app
    from arbup.logs import configure_logging
    from arbup.temporal import connect

    configure_logging(level=args.log_level)  # format: $ARBUP_LOG_FORMAT (json)
    store = RecordsStore.from_env()
    store.ensure_schema()
    # The secret access keys are derived from; made here if this is the first use,
    # so keys created later with `arbup key create` work without a restart.
    master_key = MasterKey.load_or_create(default_master_key_path())
    settings = ApiSettings(
        task_queue=args.task_queue,
        search_attributes=not args.no_search_attributes,
        server_name=args.server_name or socket.gethostname(),
        executor=args.executor or _executor_for(args.host),
        max_body_bytes=args.max_body_bytes,
    )
    app = create_app(
        store, IamStore(store, master_key), connect=connect, settings=settings
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        access_log=False,  # the API logs its own line per request, with the trace id
        log_level=args.log_level,
        log_config=None,  # uvicorn's lines go through the handler above, same format
        server_header=False,
        proxy_headers=False,
    )
    await uvicorn.Server(config).serve()
    return 0


def _executor_for(host: str) -> str:
    """The address the server answers on, unless it listens on every address."""
    try:
        if ipaddress.ip_address(host).is_unspecified:
            return socket.gethostname()
    except ValueError:
        pass
    return host


# -- arbup user ------------------------------------------------------------------------


async def cmd_user_add(args: argparse.Namespace) -> int:
    iam = _iam()
    iam.add_user(args.name, _read_password(args))
    print(f"user {args.name} added")
    return 0


async def cmd_user_password(args: argparse.Namespace) -> int:
    iam = _iam()
    iam.set_password(args.name, _read_password(args))
    print(f"password of {args.name} {'removed' if args.no_password else 'changed'}")
    return 0


async def cmd_user_delete(args: argparse.Namespace) -> int:
    _iam().delete_user(args.name)
    print(f"user {args.name} deleted, with its grants and access keys")
    return 0


def _scope(args: argparse.Namespace) -> str:
    permission = args.permission.strip().upper()
    if permission in GLOBAL_PERMISSIONS:
        if args.service is not None:
            raise IamError(f"{permission} is global; drop --service")
        return ALL
    if args.service is None and not args.all:
        raise IamError(f"{permission} needs --service ID or --all")
    return ALL if args.all else str(args.service)


async def cmd_user_grant(args: argparse.Namespace) -> int:
    scope = _scope(args)
    added = _iam().grant(args.name, args.permission, scope)
    where = "" if scope == ALL else f" on service {scope}"
    state = "granted to" if added else "already held by"
    print(f"{args.permission.upper()}{where}: {state} {args.name}")
    return 0


async def cmd_user_revoke(args: argparse.Namespace) -> int:
    scope = _scope(args)
    removed = _iam().revoke(args.name, args.permission, scope)
    where = "" if scope == ALL else f" on service {scope}"
    state = "revoked from" if removed else "was not held by"
    print(f"{args.permission.upper()}{where}: {state} {args.name}")
    return 0


async def cmd_user_list(args: argparse.Namespace) -> int:
    users = _iam().list_users()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": u.name,
                        "password": u.has_password,
                        "createdAt": u.created_at.isoformat(),
                        "grants": [{"permission": p, "scope": s} for p, s in u.grants],
                        "accessKeys": u.access_keys,
                    }
                    for u in users
                ],
                indent=2,
            )
        )
        return 0
    for u in users:
        grants = (
            ", ".join(
                p if s == ALL and p in GLOBAL_PERMISSIONS else f"{p} on {s}"
                for p, s in u.grants
            )
            or "no grants"
        )
        login = "password" if u.has_password else "keys only"
        keys = f", {len(u.access_keys)} access key(s)" if u.access_keys else ""
        print(f"{u.name}  ({login}{keys}): {grants}")
    print(f"{len(users)} users")
    return 0


# -- arbup key -------------------------------------------------------------------------


async def cmd_key_create(args: argparse.Namespace) -> int:
    access_key, secret = _iam(master_key=True).create_access_key(args.user)
    if args.json:
        print(json.dumps({"accessKey": access_key, "secret": secret}))
    else:
        print(f"access key: {access_key}")
        print(f"secret:     {secret}")
        print("the secret is shown only now; keep it safe", file=sys.stderr)
    return 0


async def cmd_key_list(args: argparse.Namespace) -> int:
    for k in _iam().list_access_keys(args.user):
        print(f"{k.access_key}  {k.user}  created {k.created_at:%Y-%m-%d %H:%M:%S}Z")
    return 0


async def cmd_key_delete(args: argparse.Namespace) -> int:
    _iam().delete_access_key(args.access_key)
    print(f"access key {args.access_key} deleted")
    return 0


def _guarded(fn):
    """Refusals of the IAM store as exit code 2 with their message."""

    async def run(args: argparse.Namespace) -> int:
        try:
            return await fn(args)
        except (IamError, RecordsError) as exc:
            return _refused(str(exc))

    run.__doc__ = fn.__doc__
    return run


def add_parsers(sub) -> None:
    p = sub.add_parser("api", help="serve the HTTP API (OCP's API v2)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--task-queue",
        default=TASK_QUEUE,
        help="task queue of the workers upgrades are started on",
    )
    p.add_argument(
        "--server-name", help="`server` of the envelopes (default: host name)"
    )
    p.add_argument("--executor", help="`executor` of started tasks (default: --host)")
    p.add_argument("--max-body-bytes", type=int, default=64 * 1024)
    p.add_argument(
        "--no-search-attributes",
        action="store_true",
        help="for a namespace without arbup's search attributes registered",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
    )
    p.set_defaults(run=cmd_api)

    user = sub.add_parser("user", help="users of the HTTP API and their grants")
    users = user.add_subparsers(dest="user_command", required=True)

    def password_flags(q) -> None:
        group = q.add_mutually_exclusive_group()
        group.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from the first line of stdin",
        )
        group.add_argument(
            "--no-password",
            action="store_true",
            help="no password: the user signs with access keys only",
        )

    q = users.add_parser("add", help="add a user (asks for its password)")
    q.add_argument("name")
    password_flags(q)
    q.set_defaults(run=_guarded(cmd_user_add))
    q = users.add_parser("password", help="change a user's password")
    q.add_argument("name")
    password_flags(q)
    q.set_defaults(run=_guarded(cmd_user_password))
    q = users.add_parser("delete", help="delete a user, its grants and keys")
    q.add_argument("name")
    q.set_defaults(run=_guarded(cmd_user_delete))
    for verb, fn, text in (
        ("grant", cmd_user_grant, "give"),
        ("revoke", cmd_user_revoke, "take away"),
    ):
        q = users.add_parser(verb, help=f"{text} a permission")
        q.add_argument("name")
        q.add_argument("permission", help=", ".join(PERMISSIONS))
        scope = q.add_mutually_exclusive_group()
        scope.add_argument(
            "--service", type=int, metavar="ID", help="only on this arbitration service"
        )
        scope.add_argument("--all", action="store_true", help="on every service")
        q.set_defaults(run=_guarded(fn))
    q = users.add_parser("list", help="users, their grants and keys")
    q.add_argument("--json", action="store_true")
    q.set_defaults(run=_guarded(cmd_user_list))

    key = sub.add_parser("key", help="access keys (OCP-ACCESS-KEY-HMACSHA1)")
    keys = key.add_subparsers(dest="key_command", required=True)
    q = keys.add_parser("create", help="a new key of a user; prints its secret once")
    q.add_argument("user")
    q.add_argument("--json", action="store_true")
    q.set_defaults(run=_guarded(cmd_key_create))
    q = keys.add_parser("list", help="access keys (never their secrets)")
    q.add_argument("user", nargs="?")
    q.set_defaults(run=_guarded(cmd_key_list))
    q = keys.add_parser("delete", help="revoke an access key")
    q.add_argument("access_key")
    q.set_defaults(run=_guarded(cmd_key_delete))
