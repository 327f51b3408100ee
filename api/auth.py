"""Authentication: HTTP Basic, or OCP's access-key signature.

Basic: ``Authorization: Basic base64(user:password)``, checked against the user's
scrypt hash in the records store.

Access key: ``Authorization: OCP-ACCESS-KEY-HMACSHA1 <AK>:<signature>`` with a
``Date`` header (RFC 1123) within 15 minutes of the server's clock, where::

    signature = base64(HMAC-SHA1(secret, string_to_sign))
    string_to_sign = METHOD + "\\n" + MD5(body) + "\\n" + Content-Type + "\\n"
                     + Date + "\\n" + Host + "\\n" + OCP-headers + "\\n"
                     + path[?query]

* ``MD5(body)``: upper-case hex MD5 of the raw body; for a request without a body,
  the empty string (the MD5 of the empty body is accepted too).
* ``Content-Type``, ``Date``, ``Host``: the header values as sent ("" if absent).
* ``OCP-headers``: every header whose name starts with ``x-ocp-``, as
  ``name:value`` (name in lower case, value trimmed), sorted by name and joined by
  "\\n"; the empty string when there are none.
* ``path[?query]``: the request path as sent; with a query, "?" and its parameters
  (URL-decoded) sorted by name and then value, as ``name=value`` joined by "&".

``sign_request`` computes the header for a client (the tests use it).

Nothing here logs a header, a password, a secret or a body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import parse_qsl

from api.errors import ApiError
from arbup.records.iam import IamStore, MasterKeyMismatch, Principal

log = logging.getLogger("arbup.api.auth")

SIGNATURE_SCHEME = "OCP-ACCESS-KEY-HMACSHA1"
MAX_CLOCK_SKEW = timedelta(minutes=15)
REALM = 'Basic realm="arbup", charset="UTF-8"'


def _refuse(message: str) -> ApiError:
    return ApiError(
        "AUTHENTICATION_FAILED", message, headers={"WWW-Authenticate": REALM}
    )


def body_md5(body: bytes) -> str:
    return hashlib.md5(body, usedforsecurity=False).hexdigest().upper()


def canonical_ocp_headers(headers: Iterable[tuple[str, str]]) -> str:
    pairs = sorted(
        (name.lower(), value.strip())
        for name, value in headers
        if name.lower().startswith("x-ocp-")
    )
    return "\n".join(f"{name}:{value}" for name, value in pairs)


def canonical_resource(path: str, query: str) -> str:
    params = sorted(parse_qsl(query, keep_blank_values=True))
    if not params:
        return path
    return path + "?" + "&".join(f"{name}={value}" for name, value in params)


def string_to_sign(
    method: str,
    md5: str,
    content_type: str,
    date: str,
    host: str,
    ocp_headers: str,
    resource: str,
) -> str:
    parts = (method.upper(), md5, content_type, date, host, ocp_headers, resource)
    return "\n".join(parts)


def signature(secret: str, message: str) -> str:
    mac = hmac.new(
        secret.encode(), message.encode("utf-8", "surrogatepass"), hashlib.sha1
    )
    return base64.b64encode(mac.digest()).decode()


def sign_request(
    access_key: str,
    secret: str,
    *,
    method: str,
    host: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    content_type: str = "",
    headers: Mapping[str, str] | None = None,
    date: datetime | None = None,
) -> dict[str, str]:
    """The ``Authorization`` and ``Date`` headers of a signed request."""
    date_text = format_datetime(
        (date or datetime.now(UTC)).astimezone(UTC), usegmt=True
    )
    message = string_to_sign(
        method,
        body_md5(body) if body else "",
        content_type,
        date_text,
        host,
        canonical_ocp_headers((headers or {}).items()),
        canonical_resource(path, query),
    )
    credentials = f"{access_key}:{signature(secret, message)}"
    return {"Authorization": f"{SIGNATURE_SCHEME} {credentials}", "Date": date_text}


def authenticate(
    iam: IamStore,
    *,
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> Principal:
    """The principal the request's credentials name, or ApiError 401."""
    by_name = {}
    for name, value in headers:
        by_name.setdefault(name.lower(), value)
    authorization = by_name.get("authorization", "").strip()
    if not authorization:
        raise _refuse(
            "authentication required: send HTTP Basic credentials or an "
            f"{SIGNATURE_SCHEME} signature"
        )
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "basic":
        return _basic(iam, credentials.strip())
    if scheme == SIGNATURE_SCHEME:
        return _signed(
            iam, credentials.strip(), method, path, query, headers, by_name, body
        )
    raise _refuse(f"unsupported authorization scheme; use Basic or {SIGNATURE_SCHEME}")


def _basic(iam: IamStore, credentials: str) -> Principal:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _refuse("malformed Basic credentials") from None
    name, sep, password = decoded.partition(":")
    if not sep:
        raise _refuse("malformed Basic credentials")
    principal = iam.authenticate_password(name, password)
    if principal is None:
        raise _refuse("wrong user name or password")
    return principal


def _signed(
    iam: IamStore,
    credentials: str,
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    by_name: dict[str, str],
    body: bytes,
) -> Principal:
    access_key, sep, given = credentials.partition(":")
    if not sep or not access_key or not given:
        raise _refuse(
            f"malformed {SIGNATURE_SCHEME} credentials; expected <AK>:<signature>"
        )
    date_text = by_name.get("date", "")
    try:
        date = parsedate_to_datetime(date_text)
    except (TypeError, ValueError, IndexError, OverflowError):
        date = None
    if date is None or date.tzinfo is None:
        raise _refuse("a signed request needs a Date header in RFC 1123 format")
    if abs(datetime.now(UTC) - date) > MAX_CLOCK_SKEW:
        raise _refuse(
            "the request's Date is more than 15 minutes from the server's clock"
        )
    try:
        found = iam.access_key_secret(access_key)
    except MasterKeyMismatch as mismatch:
        log.warning("%s", mismatch)
        found = None
    if found is None:
        raise _refuse("unknown access key or wrong signature")
    principal, secret = found

    common = (
        by_name.get("content-type", ""),
        date_text,
        by_name.get("host", ""),
        canonical_ocp_headers(headers),
        canonical_resource(path, query),
    )
    candidates = [body_md5(body)] if body else ["", body_md5(b"")]
    for md5 in candidates:
        expected = signature(secret, string_to_sign(method, md5, *common))
        if hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
            return principal
    raise _refuse("unknown access key or wrong signature")
