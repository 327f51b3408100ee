"""The TOML inventory file loader, and loading its result into the store."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from arbup.inventory import Inventory, InventoryError, load_inventory_file
from arbup.models import GroupStatus, ServiceStatus

OLD = "4.2.1.8-108000022024072217"
NEW = "4.3.4.0-200000022024070119"
RPM = f"oceanbase-{NEW}.el7.x86_64.rpm"
ARM_RPM = f"oceanbase-{NEW}.el7.aarch64.rpm"

SERVICE = """
  [[groups.services]]
  id = {id}
  host = "127.0.1.{id}"
  ssh_port = 2222
  ssh_user = "root"
  ssh_credential = "local"
  svr_ip = "127.0.1.{id}"
  svr_port = {port}
  install_path = "/home/admin/oceanbase"
  run_user = "admin"
  operating_system = "el7"
  arch = "x86_64"
"""


def write(folder: Path, body: str, name: str = "inventory.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def rpm(folder: Path, name: str = RPM, content: bytes = b"rpm bytes\n" * 1000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content)
    return path


def group(gid: int = 1, services: str = "", extra: str = "") -> str:
    return f"""
[[groups]]
id = {gid}
name = "arb-group-{gid}"
version = "{OLD}"
{extra}
{services}
"""


def problems_of(path: Path) -> list[str]:
    with pytest.raises(InventoryError) as caught:
        load_inventory_file(path)
    return caught.value.problems


def test_valid_inventory(tmp_path):
    content = b"x" * (3 * 1024 * 1024 + 17)  # more than one read chunk
    relative = rpm(tmp_path / "packages", content=content)
    absolute = rpm(tmp_path / "elsewhere", ARM_RPM, b"arm")
    body = (
        f"""
[[packages]]
path = "packages/{RPM}"

[[packages]]
path = "{absolute}"
"""
        + group(
            1,
            SERVICE.format(id=1, port=2882)
            + SERVICE.format(id=2, port=2883)
            + f'  version = "{NEW}"\n'
            + '  status = "STOPPED"\n  priority = 3\n  zone = "z1"\n',
            extra='status = "UNAVAILABLE"',
        )
        + group(7, SERVICE.format(id=3, port=2882))
    )
    inventory = load_inventory_file(write(tmp_path, body))

    assert isinstance(inventory, Inventory)
    arm, x86 = sorted(inventory.packages, key=lambda p: p.arch)
    assert x86.path == str(relative.resolve())
    assert Path(x86.path).is_absolute()
    assert x86.file_name == RPM
    assert (x86.name, x86.full_version, x86.operating_system, x86.arch) == (
        "oceanbase",
        NEW,
        "el7",
        "x86_64",
    )
    assert x86.size == len(content)
    assert x86.sha256 == hashlib.sha256(content).hexdigest()
    assert arm.path == str(absolute) and arm.arch == "aarch64"
    assert arm.sha256 == hashlib.sha256(b"arm").hexdigest()

    g1, g7 = inventory.groups
    assert (g1.id, g1.name, g1.version, g1.status) == (
        1,
        "arb-group-1",
        OLD,
        GroupStatus.UNAVAILABLE,
    )
    assert g7.status is GroupStatus.RUNNING
    s1, s2 = g1.services
    assert s1.group_id == 1 and s2.group_id == 1 and g7.services[0].group_id == 7
    assert s1.version == OLD  # defaults to the group's
    assert s2.version == NEW  # allowed to differ
    assert (s2.status, s2.priority, s2.zone, s2.svr_port) == (
        ServiceStatus.STOPPED,
        3,
        "z1",
        2883,
    )
    assert (s1.ssh_port, s1.ssh_credential, s1.install_path) == (
        2222,
        "local",
        "/home/admin/oceanbase",
    )


def test_field_errors_name_the_entry_and_field(tmp_path):
    bad_port = SERVICE.format(id=1, port=2882) + SERVICE.format(id=2, port=70000)
    missing_host = SERVICE.format(id=3, port=2882).replace('host = "127.0.1.3"\n', "")
    body = group(1, bad_port) + group(2, missing_host + '  arhc = "x86_64"\n')
    problems = problems_of(write(tmp_path, body))

    assert any(
        p.startswith("groups[0].services[1].svr_port:") and "65535" in p
        for p in problems
    ), problems
    assert "groups[1].services[0].host: is required; add it to the entry" in problems
    assert any(
        p.startswith("groups[1].services[0].arhc: unknown key")
        and "did you mean 'arch'" in p
        for p in problems
    ), problems


def test_invalid_values_are_explained(tmp_path):
    service = SERVICE.format(id=1, port=2882).replace(
        'run_user = "admin"', 'run_user = "Admin; rm"'
    )
    body = group(1, service).replace(f'version = "{OLD}"', 'version = "4.3"')
    problems = problems_of(write(tmp_path, body))
    assert any(
        p.startswith("groups[0].version:") and "<a.b.c.d>-<build>" in p
        for p in problems
    ), problems
    assert any(
        p.startswith("groups[0].services[0].run_user:") and "Unix user" in p
        for p in problems
    ), problems
    # the bad group version is also the service's default; reported per field
    assert all("group_id" not in p for p in problems)


def test_duplicate_ids(tmp_path):
    body = group(
        1, SERVICE.format(id=1, port=2882) + SERVICE.format(id=2, port=2883)
    ) + group(1, SERVICE.format(id=2, port=2884))
    problems = problems_of(write(tmp_path, body))
    assert any(
        p.startswith("groups[1].id: group id 1 is already used by groups[0]")
        for p in problems
    ), problems
    assert any(
        p.startswith(
            "groups[1].services[0].id: service id 2 is already used "
            "by groups[0].services[1]"
        )
        for p in problems
    ), problems


def test_structure_errors(tmp_path):
    no_services = group(1)
    wrong_group_id = group(2, SERVICE.format(id=5, port=2882) + "  group_id = 9\n")
    body = "services = 1\n" + no_services + wrong_group_id
    problems = problems_of(write(tmp_path, body))
    assert any(p.startswith("services: unknown top-level key") for p in problems)
    assert any(
        p.startswith("groups[0].services: a group needs at least one service")
        for p in problems
    ), problems
    assert any(
        p.startswith("groups[1].services[0].group_id: 9 differs") for p in problems
    )

    as_table = write(tmp_path, "[groups]\nid = 1\n", "table.toml")
    assert any(
        p.startswith("groups: must be an array of tables") and "[[groups]]" in p
        for p in problems_of(as_table)
    )


def test_package_errors(tmp_path):
    rpm(tmp_path, "oceanbase-4.3.4.0.el7.x86_64.rpm")
    rpm(tmp_path / "a")
    rpm(tmp_path / "b")
    body = f"""
[[packages]]
path = "missing/{RPM}"

[[packages]]
path = "oceanbase-4.3.4.0.el7.x86_64.rpm"

[[packages]]
path = "a/{RPM}"

[[packages]]
path = "b/{RPM}"

[[packages]]
file = "a/{RPM}"
""" + group(1, SERVICE.format(id=1, port=2882))
    problems = problems_of(write(tmp_path, body))
    assert any(
        p.startswith("packages[0].path:")
        and "does not exist" in p
        and str(tmp_path) in p
        for p in problems
    ), problems
    assert any(
        p.startswith("packages[1].path:") and "rename the file" in p for p in problems
    ), problems
    assert any(
        p.startswith("packages[3].path:") and "packages[2]" in p for p in problems
    ), problems
    assert any(p.startswith("packages[4].file: unknown key") for p in problems), (
        problems
    )
    assert any(p.startswith("packages[4].path: is required") for p in problems), (
        problems
    )
    assert len(problems) == 5, problems


def test_file_errors(tmp_path):
    with pytest.raises(InventoryError, match="does not exist"):
        load_inventory_file(tmp_path / "nope.toml")
    with pytest.raises(InventoryError, match="folder"):
        load_inventory_file(tmp_path)
    broken = write(tmp_path, "[[groups]\nid = 1\n")
    with pytest.raises(InventoryError, match="not valid TOML.*line 1"):
        load_inventory_file(broken)


def test_error_message_lists_every_problem(tmp_path):
    body = group(1, SERVICE.format(id=1, port=0)) + group(
        1, SERVICE.format(id=1, port=1)
    )
    path = write(tmp_path, body)
    with pytest.raises(InventoryError) as caught:
        load_inventory_file(path)
    message = str(caught.value)
    assert str(path) in message and "nothing was loaded" in message
    for problem in caught.value.problems:
        assert f"  - {problem}" in message
    assert isinstance(caught.value, ValueError)


def test_load_file_into_store(store, tmp_path):
    rpm(tmp_path / "packages")
    body = f'[[packages]]\npath = "packages/{RPM}"\n' + group(
        1, SERVICE.format(id=1, port=2882) + SERVICE.format(id=2, port=2882)
    )
    counts = store.load_inventory(load_inventory_file(write(tmp_path, body)))
    assert counts == {"groups": 1, "services": 2, "packages": 1}
    assert [s.svr_ip for s in store.get_group(1).services] == ["127.0.1.1", "127.0.1.2"]
    package = store.find_package(NEW, "el7", "x86_64")
    assert package.path == str((tmp_path / "packages" / RPM).resolve())

    # an invalid file never reaches the store: the loader raises before anything
    bad = write(tmp_path, body.replace("port = 2882", "port = 0"), "bad.toml")
    with pytest.raises(InventoryError):
        store.load_inventory(load_inventory_file(bad))
    assert store.get_service(1).svr_port == 2882
