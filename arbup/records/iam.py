"""Users, permissions and access keys of the HTTP API, kept in the records store.

**Users** have a name and, unless they only sign requests with access keys, a
password. Passwords are stored as salted scrypt hashes (``hashlib.scrypt``, N=2^14,
r=8, p=1, 16-byte random salt); the password itself is never stored.

**Grants** give a user a permission, optionally scoped to one arbitration service:

=======================  ====================================================
``ARBITRATION:UPDATE``   upgrade (and read) the services it is scoped to
``ARBITRATION:READ``     read the services it is scoped to
``TASK_VIEWER``          read tasks, their subtasks and logs (global)
``TASK_MANAGER``         act on tasks; implies ``TASK_VIEWER`` (global)
=======================  ====================================================

A scope is ``*`` (every service; the only scope of a global permission) or a
service id.

**Access keys** (OCP's ``OCP-ACCESS-KEY-HMACSHA1`` signatures). The server must
compute HMAC-SHA1 with the key's secret to check a signature, so the secret cannot
be kept as a one-way hash like a password. Instead of storing it (even encrypted),
arbup *derives* it::

    secret = base64url(HMAC-SHA256(master_key, "arbup-access-key-v1:" + AK))

from a random 32-byte master key kept in a file on the server (``MasterKey``;
``$ARBUP_API_MASTER_KEY_FILE``, by default ``<state dir>/api-master.key``, mode
0600). The records store holds only the AK, its user and a sha256 of the secret,
so a copy of the database reveals no secret; whoever holds the master key file can
derive every key's secret, so that file is as sensitive as the secrets
themselves. The secret is shown once, when the key is created, and no command or
endpoint returns it again. A key is revoked by deleting its row. Replacing the
master key invalidates every key (their ``secret_check`` no longer matches, which
the server reports as such in its log).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.exc import IntegrityError

from arbup.records.schema import iam_access_keys, iam_grants, iam_users
from arbup.records.store import NotFound, RecordsError, RecordsStore

ARBITRATION_UPDATE = "ARBITRATION:UPDATE"
ARBITRATION_READ = "ARBITRATION:READ"
TASK_VIEWER = "TASK_VIEWER"
TASK_MANAGER = "TASK_MANAGER"

SCOPED_PERMISSIONS = (ARBITRATION_UPDATE, ARBITRATION_READ)
GLOBAL_PERMISSIONS = (TASK_VIEWER, TASK_MANAGER)
PERMISSIONS = SCOPED_PERMISSIONS + GLOBAL_PERMISSIONS
# Holding the key implies holding every permission of its value (same scope).
IMPLIES = {
    ARBITRATION_UPDATE: (ARBITRATION_READ,),
    TASK_MANAGER: (TASK_VIEWER,),
}
ALL = "*"

USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
ACCESS_KEY_RE = re.compile(r"^AK[A-Z2-7]{20}$")
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _SCRYPT_LEN = 2**14, 8, 1, 32
_KEY_CONTEXT = b"arbup-access-key-v1:"
_CACHE_SIZE = 256


class IamError(RecordsError, ValueError):
    """A user, grant or key request that cannot be carried out."""


def check_user_name(name: str) -> str:
    if not isinstance(name, str) or not USER_NAME_RE.match(name):
        raise IamError(
            f"user name {name!r} must be 1-64 letters, digits or . _ @ -, "
            "starting with a letter or digit"
        )
    return name


def check_permission(permission: str, scope: str) -> tuple[str, str]:
    """The (permission, scope) of a grant, normalized; raises IamError."""
    permission = permission.strip().upper() if isinstance(permission, str) else ""
    if permission not in PERMISSIONS:
        raise IamError(
            f"unknown permission {permission!r}; one of {', '.join(PERMISSIONS)}"
        )
    scope = str(scope).strip()
    if permission in GLOBAL_PERMISSIONS:
        if scope != ALL:
            raise IamError(f"{permission} is global; it cannot be scoped to a service")
        return permission, scope
    if scope != ALL and not (scope.isascii() and scope.isdigit() and int(scope) > 0):
        raise IamError(f"scope {scope!r} must be '*' or an arbitration service id")
    return permission, scope if scope == ALL else str(int(scope))


# -- passwords ----------------------------------------------------------------------


def hash_password(password: str) -> str:
    _check_password(password)
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _SCRYPT_LEN)
    return "$".join(
        [
            "scrypt",
            str(_SCRYPT_N),
            str(_SCRYPT_R),
            str(_SCRYPT_P),
            base64.b64encode(salt).decode(),
            base64.b64encode(digest).decode(),
        ]
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(
            password, base64.b64decode(salt), int(n), int(r), int(p), len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=length,
        maxmem=64 * 1024 * 1024,
    )


def _check_password(password: str) -> None:
    if not isinstance(password, str) or not (
        MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH
    ):
        raise IamError(
            f"a password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} "
            "characters long"
        )


# A hash of a random password: checked when the user does not exist, so that an
# unknown user takes as long to refuse as a wrong password.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


# -- the master key of access keys ---------------------------------------------------


def default_master_key_path() -> Path:
    path = os.environ.get("ARBUP_API_MASTER_KEY_FILE")
    if path:
        return Path(path)
    return Path(os.environ.get("ARBUP_STATE_DIR") or ".arbup") / "api-master.key"


class MasterKey:
    """The server's secret from which every access key's secret is derived."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise IamError("the access-key master key must be at least 32 bytes")
        self._key = key

    @classmethod
    def load(cls, path: Path) -> MasterKey:
        text = Path(path).read_text().strip()
        try:
            return cls(bytes.fromhex(text))
        except ValueError as exc:
            raise IamError(f"{path} does not hold a hex-encoded master key") from exc

    @classmethod
    def load_or_create(cls, path: Path) -> MasterKey:
        """Load the key, creating the file (mode 0600) if it does not exist."""
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
        return cls.load(path)

    def secret_for(self, access_key: str) -> str:
        mac = hmac.new(self._key, _KEY_CONTEXT + access_key.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")

    def __repr__(self) -> str:  # never show the key
        return "MasterKey(...)"


def _secret_check(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# -- principals -----------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """An authenticated user and what it may do."""

    name: str
    grants: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    via: str = "password"

    def _effective(self) -> set[tuple[str, str]]:
        held = set(self.grants)
        for permission, scope in self.grants:
            for implied in IMPLIES.get(permission, ()):
                held.add((implied, scope))
        return held

    def has(self, permission: str, service_id: int | None = None) -> bool:
        held = self._effective()
        if (permission, ALL) in held:
            return True
        return service_id is not None and (permission, str(service_id)) in held

    def missing(self, permission: str, service_ids: Iterable[int]) -> list[int]:
        """The services on which the permission is not held, in the given order."""
        return [sid for sid in service_ids if not self.has(permission, sid)]

    def grant_list(self) -> list[dict[str, str]]:
        return [
            {"permission": permission, "scope": scope}
            for permission, scope in sorted(self.grants)
        ]


@dataclass(frozen=True)
class UserInfo:
    name: str
    has_password: bool
    created_at: datetime
    grants: list[tuple[str, str]]
    access_keys: list[str]


@dataclass(frozen=True)
class AccessKeyInfo:
    access_key: str
    user: str
    created_at: datetime


# -- the store ------------------------------------------------------------------------


class IamStore:
    """Users, grants and access keys in the records store's database.

    Thread-safe like ``RecordsStore``: every method uses its own transaction.
    ``master_key`` is needed to create access keys and to check signatures; without
    it, password authentication still works.
    """

    def __init__(
        self, store: RecordsStore, master_key: MasterKey | None = None
    ) -> None:
        self._engine = store.engine
        self.master_key = master_key
        # Successful password checks, keyed by an HMAC (with a per-process key) of
        # the stored hash and the password, so repeated requests skip scrypt. A
        # changed password changes the stored hash and so misses the cache.
        self._cache_key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(arbup_write=True)
            with conn.begin():
                yield conn

    # -- users ----------------------------------------------------------------------

    def add_user(self, name: str, password: str | None) -> None:
        check_user_name(name)
        password_hash = hash_password(password) if password is not None else None
        try:
            with self._write() as conn:
                conn.execute(
                    insert(iam_users).values(
                        name=name,
                        password_hash=password_hash,
                        created_at=datetime.now(UTC),
                    )
                )
        except IntegrityError as exc:
            raise IamError(f"user {name!r} already exists") from exc

    def set_password(self, name: str, password: str | None) -> None:
        password_hash = hash_password(password) if password is not None else None
        with self._write() as conn:
            user_id = _user_id(conn, name)
            conn.execute(
                iam_users.update()
                .where(iam_users.c.id == user_id)
                .values(password_hash=password_hash)
            )

    def delete_user(self, name: str) -> None:
        with self._write() as conn:
            user_id = _user_id(conn, name)
            conn.execute(delete(iam_grants).where(iam_grants.c.user_id == user_id))
            conn.execute(
                delete(iam_access_keys).where(iam_access_keys.c.user_id == user_id)
            )
            conn.execute(delete(iam_users).where(iam_users.c.id == user_id))

    def list_users(self) -> list[UserInfo]:
        with self._read() as conn:
            users = conn.execute(select(iam_users).order_by(iam_users.c.name)).all()
            grants = conn.execute(
                select(iam_grants).order_by(iam_grants.c.permission, iam_grants.c.scope)
            ).all()
            keys = conn.execute(
                select(iam_access_keys).order_by(iam_access_keys.c.access_key)
            ).all()
        return [
            UserInfo(
                name=u.name,
                has_password=u.password_hash is not None,
                created_at=u.created_at,
                grants=[(g.permission, g.scope) for g in grants if g.user_id == u.id],
                access_keys=[k.access_key for k in keys if k.user_id == u.id],
            )
            for u in users
        ]

    # -- grants ---------------------------------------------------------------------

    def grant(self, name: str, permission: str, scope: str = ALL) -> bool:
        """Give the user the permission on the scope; False if it already had it."""
        permission, scope = check_permission(permission, scope)
        with self._write() as conn:
            user_id = _user_id(conn, name)
            exists = conn.execute(
                select(iam_grants.c.id).where(
                    iam_grants.c.user_id == user_id,
                    iam_grants.c.permission == permission,
                    iam_grants.c.scope == scope,
                )
            ).first()
            if exists:
                return False
            conn.execute(
                insert(iam_grants).values(
                    user_id=user_id, permission=permission, scope=scope
                )
            )
            return True

    def revoke(self, name: str, permission: str, scope: str = ALL) -> bool:
        """Take the grant away; False if the user did not have it."""
        permission, scope = check_permission(permission, scope)
        with self._write() as conn:
            user_id = _user_id(conn, name)
            result = conn.execute(
                delete(iam_grants).where(
                    iam_grants.c.user_id == user_id,
                    iam_grants.c.permission == permission,
                    iam_grants.c.scope == scope,
                )
            )
            return result.rowcount > 0

    def principal(self, name: str, *, via: str = "password") -> Principal | None:
        with self._read() as conn:
            row = conn.execute(
                select(iam_users.c.id).where(iam_users.c.name == name)
            ).first()
            if row is None:
                return None
            return _principal(conn, row.id, name, via)

    # -- authentication -------------------------------------------------------------

    def authenticate_password(self, name: str, password: str) -> Principal | None:
        """The user if the password is its own, else None (also for unknown users,
        after the same amount of work)."""
        if not USER_NAME_RE.match(name) or len(password) > MAX_PASSWORD_LENGTH:
            return None
        with self._read() as conn:
            row = conn.execute(
                select(iam_users).where(iam_users.c.name == name)
            ).first()
        if row is None or row.password_hash is None:
            verify_password(password, _DUMMY_HASH)
            return None
        if not self._password_ok(password, row.password_hash):
            return None
        with self._read() as conn:
            return _principal(conn, row.id, row.name, "password")

    def _password_ok(self, password: str, stored: str) -> bool:
        token = hmac.new(
            self._cache_key,
            stored.encode() + b"\0" + password.encode("utf-8", "surrogatepass"),
            hashlib.sha256,
        ).digest()
        with self._lock:
            if token in self._verified:
                self._verified.move_to_end(token)
                return True
        if not verify_password(password, stored):
            return False
        with self._lock:
            self._verified[token] = None
            while len(self._verified) > _CACHE_SIZE:
                self._verified.popitem(last=False)
        return True

    # -- access keys ----------------------------------------------------------------

    def create_access_key(self, name: str) -> tuple[str, str]:
        """A new access key of the user: (AK, secret). The secret is not stored and
        is returned only here."""
        if self.master_key is None:
            raise IamError("no master key: access keys cannot be created")
        access_key = "AK" + base64.b32encode(secrets.token_bytes(15)).decode()[:20]
        secret = self.master_key.secret_for(access_key)
        with self._write() as conn:
            user_id = _user_id(conn, name)
            conn.execute(
                insert(iam_access_keys).values(
                    access_key=access_key,
                    user_id=user_id,
                    secret_check=_secret_check(secret),
                    created_at=datetime.now(UTC),
                )
            )
        return access_key, secret

    def delete_access_key(self, access_key: str) -> None:
        with self._write() as conn:
            result = conn.execute(
                delete(iam_access_keys).where(
                    iam_access_keys.c.access_key == access_key
                )
            )
            if result.rowcount != 1:
                raise NotFound(f"access key {access_key} does not exist")

    def list_access_keys(self, name: str | None = None) -> list[AccessKeyInfo]:
        query = (
            select(
                iam_access_keys.c.access_key,
                iam_access_keys.c.created_at,
                iam_users.c.name,
            )
            .join(iam_users, iam_users.c.id == iam_access_keys.c.user_id)
            .order_by(iam_users.c.name, iam_access_keys.c.access_key)
        )
        if name is not None:
            query = query.where(iam_users.c.name == name)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [AccessKeyInfo(r.access_key, r.name, r.created_at) for r in rows]

    def access_key_secret(self, access_key: str) -> tuple[Principal, str] | None:
        """The key's user and secret, for checking a signature; None if the key is
        unknown. Raises MasterKeyMismatch if the key was created with another
        master key (so the server can say so in its log)."""
        if self.master_key is None or not ACCESS_KEY_RE.match(access_key):
            return None
        with self._read() as conn:
            row = conn.execute(
                select(iam_access_keys, iam_users.c.name)
                .join(iam_users, iam_users.c.id == iam_access_keys.c.user_id)
                .where(iam_access_keys.c.access_key == access_key)
            ).first()
            if row is None:
                return None
            secret = self.master_key.secret_for(access_key)
            if not hmac.compare_digest(_secret_check(secret), row.secret_check):
                raise MasterKeyMismatch(access_key)
            return _principal(conn, row.user_id, row.name, "access-key"), secret


class MasterKeyMismatch(IamError):
    """The key exists but was created with another master key."""

    def __init__(self, access_key: str) -> None:
        super().__init__(
            f"access key {access_key} was created with another master key; "
            "create a new key"
        )
        self.access_key = access_key


def _user_id(conn: Connection, name: str) -> int:
    row = conn.execute(select(iam_users.c.id).where(iam_users.c.name == name)).first()
    if row is None:
        raise NotFound(f"user {name!r} does not exist")
    return row.id


def _principal(conn: Connection, user_id: int, name: str, via: str) -> Principal:
    rows = conn.execute(
        select(iam_grants.c.permission, iam_grants.c.scope).where(
            iam_grants.c.user_id == user_id
        )
    ).all()
    return Principal(name, frozenset((r.permission, r.scope) for r in rows), via)
