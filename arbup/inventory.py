"""The inventory file: the arbitration service groups and packages arbup knows about.

Operators write it by hand in TOML::

    [[packages]]
    path = "packages/oceanbase-4.3.4.0-200000022024070119.el7.x86_64.rpm"

    [[groups]]
    id = 1
    name = "arb-group-1"
    version = "4.2.1.8-108000022024072217"

      [[groups.services]]
      id = 1
      host = "127.0.1.1"
      svr_ip = "127.0.1.1"
      operating_system = "el7"
      arch = "x86_64"

Package paths are relative to the inventory file's folder (or absolute); the package's
name, full version, OS and arch come from its file name, its size and sha256 from its
content. A service belongs to the group it is written under and, unless it says
otherwise, runs the group's version. A service's ``zone`` (a name such as
``zone = "dc2"``; ``"default"`` if omitted) is the network zone whose workers reach
its host: its host steps go to that zone's task queue (see ``arbup.inputs``).

``load_inventory_file`` checks the whole file and reports every problem it finds at
once, each prefixed with where it is (``groups[0].services[1].svr_port: ...``). It only
reads: storing is ``RecordsStore.load_inventory``, in one transaction.
"""

from __future__ import annotations

import difflib
import hashlib
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from arbup.models import ArbitrationGroup, ArbitrationService, Package
from arbup.versions import VersionError, parse_package_file_name

_CHUNK = 1024 * 1024

# Keys an operator may write; everything else is reported as unknown (likely a typo).
_GROUP_KEYS = {"id", "name", "version", "status", "services"}
_SERVICE_KEYS = set(ArbitrationService.model_fields)  # includes group_id, see below
_PACKAGE_KEYS = {"path"}
_TOP_KEYS = {"groups", "packages"}


class InventoryError(ValueError):
    """The inventory file cannot be used; ``problems`` lists what is wrong."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class Inventory(BaseModel):
    groups: list[ArbitrationGroup] = []
    packages: list[Package] = []


def load_inventory_file(path: str | Path) -> Inventory:
    """Read and check an inventory file; raise InventoryError listing every problem."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise InventoryError(
            f"inventory file {path} does not exist; pass the path of your TOML "
            "inventory file"
        ) from None
    except IsADirectoryError:
        raise InventoryError(
            f"inventory path {path} is a folder; pass the TOML inventory file in it"
        ) from None
    except OSError as exc:
        raise InventoryError(f"inventory file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(
            f"inventory file {path} is not valid TOML: {exc}; fix the syntax there"
        ) from None

    problems: list[str] = []
    _check_keys(data, _TOP_KEYS, "", problems, "top-level key")
    groups = _parse_groups(data.get("groups", []), problems)
    packages = _parse_packages(data.get("packages", []), path.parent, problems)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise InventoryError(
            f"inventory file {path} has {len(problems)} problem(s); "
            f"nothing was loaded:\n{listing}",
            problems,
        )
    return Inventory(groups=groups, packages=packages)


# -- groups and services ------------------------------------------------------------


def _parse_groups(raw: Any, problems: list[str]) -> list[ArbitrationGroup]:
    tables = _array_of_tables(raw, "groups", problems)
    result: list[ArbitrationGroup] = []
    group_ids: dict[int, str] = {}
    service_ids: dict[int, str] = {}
    for i, table in enumerate(tables):
        where = f"groups[{i}]"
        if not isinstance(table, dict):
            problems.append(f"{where}: must be a table; write it as [[groups]]")
            continue
        _check_keys(table, _GROUP_KEYS, where, problems, "key")
        _check_unique(
            table.get("id"),
            "group",
            where,
            group_ids,
            problems,
            "give each group its own id",
        )
        malformed = False  # entries that are not tables: the indices would not match
        services_raw = _array_of_tables(
            table.get("services", []), f"{where}.services", problems
        )
        if not services_raw and isinstance(table.get("services", []), list):
            problems.append(
                f"{where}.services: a group needs at least one service; add "
                "[[groups.services]] tables after the group"
            )
        services: list[Any] = []
        for j, service in enumerate(services_raw):
            s_where = f"{where}.services[{j}]"
            if not isinstance(service, dict):
                problems.append(
                    f"{s_where}: must be a table; write [[groups.services]]"
                )
                malformed = True
                continue
            _check_keys(service, _SERVICE_KEYS, s_where, problems, "key")
            _check_unique(
                service.get("id"),
                "service",
                s_where,
                service_ids,
                problems,
                "service ids must be unique across the inventory",
            )
            service = dict(service)
            if "group_id" in service and service["group_id"] != table.get("id"):
                problems.append(
                    f"{s_where}.group_id: {service['group_id']!r} differs from the "
                    f"enclosing group's id {table.get('id')!r}; a service belongs to "
                    "the group it is written under, remove group_id"
                )
            service["group_id"] = table.get("id")
            if "version" not in service and "version" in table:
                service["version"] = table["version"]
            services.append(service)
        if malformed or not isinstance(table.get("services", []), list):
            continue

        fields = {k: v for k, v in table.items() if k != "services"}
        try:
            group = ArbitrationGroup.model_validate({**fields, "services": services})
        except ValidationError as exc:
            group_id_bad = any(e["loc"][:1] == ("id",) for e in exc.errors())
            for error in exc.errors():
                loc = error["loc"]
                # A bad group id also fails every service's group_id: report it once.
                if group_id_bad and len(loc) == 3 and loc[2] == "group_id":
                    continue
                problems.append(_describe(where, error))
            continue

        result.append(group)
    return result


# -- packages -----------------------------------------------------------------------


def _parse_packages(raw: Any, base: Path, problems: list[str]) -> list[Package]:
    tables = _array_of_tables(raw, "packages", problems)
    result: list[Package] = []
    targets: dict[tuple[str, str, str], str] = {}
    for i, table in enumerate(tables):
        where = f"packages[{i}]"
        if not isinstance(table, dict):
            problems.append(f"{where}: must be a table; write it as [[packages]]")
            continue
        _check_keys(table, _PACKAGE_KEYS, where, problems, "key")
        raw_path = table.get("path")
        if not isinstance(raw_path, str) or not raw_path.strip():
            problems.append(
                f"{where}.path: is required and must be a non-empty string: the RPM's "
                f"path, absolute or relative to {base.resolve()}"
            )
            continue
        file_path = Path(raw_path).expanduser()
        if not file_path.is_absolute():
            file_path = base / file_path
        file_path = file_path.resolve()
        try:
            name, full_version, os_tag, arch = parse_package_file_name(file_path.name)
        except VersionError as exc:
            problems.append(
                f"{where}.path: {exc}; rename the file, for example "
                "oceanbase-4.3.4.0-200000022024070119.el7.x86_64.rpm"
            )
            continue
        if not file_path.is_file():
            problems.append(
                f"{where}.path: {file_path} does not exist or is not a regular file; "
                f"put the RPM there or fix the path (relative paths start at "
                f"{base.resolve()})"
            )
            continue
        try:
            size, sha256 = _size_and_sha256(file_path)
        except OSError as exc:
            problems.append(f"{where}.path: {file_path} cannot be read: {exc}")
            continue
        try:
            package = Package(
                name=name,
                file_name=file_path.name,
                path=str(file_path),
                size=size,
                sha256=sha256,
                full_version=full_version,
                operating_system=os_tag,
                arch=arch,
            )
        except ValidationError as exc:
            for error in exc.errors():
                problems.append(
                    f"{where}.path: the file name's {error['loc'][0]} is not usable: "
                    f"{_message(error)}; rename the file"
                )
            continue
        target = (package.full_version, package.operating_system, package.arch)
        if target in targets:
            problems.append(
                f"{where}.path: {package.file_name} is the same version, OS and arch "
                f"as {targets[target]}; list each package once"
            )
            continue
        targets[target] = where
        result.append(package)
    return result


def _size_and_sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


# -- helpers ------------------------------------------------------------------------


def _array_of_tables(raw: Any, where: str, problems: list[str]) -> list[Any]:
    if isinstance(raw, list):
        return raw
    name = where.rsplit(".", 1)[-1]
    header = "groups.services" if name == "services" else name
    problems.append(
        f"{where}: must be an array of tables; write each entry under its own "
        f"[[{header}]] header"
    )
    return []


def _check_unique(
    value: Any, kind: str, where: str, seen: dict, problems: list[str], advice: str
) -> None:
    """Report an id already used by an earlier entry (ids that are not integers are
    left to the field validation)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return
    if value in seen:
        problems.append(
            f"{where}.id: {kind} id {value} is already used by {seen[value]}; {advice}"
        )
    else:
        seen[value] = where


def _check_keys(
    table: dict, allowed: set[str], where: str, problems: list[str], kind: str
) -> None:
    for key in table:
        if key in allowed:
            continue
        hint = difflib.get_close_matches(key, sorted(allowed), n=1)
        suggestion = (
            f"did you mean {hint[0]!r}?"
            if hint
            else (f"allowed: {', '.join(sorted(allowed))}")
        )
        location = f"{where}.{key}" if where else key
        problems.append(f"{location}: unknown {kind}; {suggestion}")


def _describe(where: str, error: dict) -> str:
    location = where
    for part in error["loc"]:
        location += f"[{part}]" if isinstance(part, int) else f".{part}"
    if error["type"] == "missing":
        return f"{location}: is required; add it to the entry"
    return f"{location}: {_message(error)} (got {error.get('input')!r})"


def _message(error: dict) -> str:
    message = error["msg"]
    return message.removeprefix("Value error, ")
