"""Requests that fail validation write nothing and start nothing."""

from __future__ import annotations

import pytest

from arbup.inventory import Inventory
from arbup.models import ArbitrationGroup, ArbitrationService, GroupStatus, Package
from arbup.versions import FullVersion, VersionError, parse_observer_version
from starter.service import UpgradeRefused, start_upgrade

OLD = "4.2.1.8-108000022024072217"
TARGET = "4.3.4.0-200000022024070119"


def service(index: int, arch: str = "x86_64") -> ArbitrationService:
    return ArbitrationService(
        id=index,
        group_id=1,
        host=f"127.0.9.{index}",
        svr_ip=f"127.0.9.{index}",
        operating_system="el7",
        arch=arch,
        version=OLD,
    )


def package(full_version: str, arch: str = "x86_64") -> Package:
    return Package(
        file_name=f"oceanbase-{full_version}.el7.{arch}.rpm",
        path=f"/nonexistent/oceanbase-{full_version}.el7.{arch}.rpm",
        size=1,
        sha256="0" * 64,
        full_version=full_version,
        operating_system="el7",
        arch=arch,
    )


@pytest.fixture
def loaded(store):
    group = ArbitrationGroup(
        id=1, name="g1", version=OLD, services=[service(1), service(2, "aarch64")]
    )
    store.load_inventory(
        Inventory(groups=[group], packages=[package(TARGET), package(OLD)])
    )
    return store


@pytest.mark.parametrize(
    ("group", "version", "os_tag", "code", "words"),
    [
        (1, "4.3.4.0", "el7", "ILLEGAL_ARGUMENT", "<a.b.c.d>-<build>"),
        (1, "4.3.4.0-2000; rm -rf /", "el7", "ILLEGAL_ARGUMENT", "<a.b.c.d>-<build>"),
        (1, TARGET, "EL 7", "ILLEGAL_ARGUMENT", "OS tag"),
        (7, TARGET, "el7", "ARBITRATION_GROUP_NOT_FOUND", "group 7 does not exist"),
        (1, OLD, "el7", "TARGET_VERSION_NOT_NEWER", "not newer"),
        (1, "4.1.0.0-100000012023010101", "el7", "TARGET_VERSION_NOT_NEWER", "not newer"),
        (1, TARGET, "el8", "OPERATING_SYSTEM_MISMATCH", "run el7"),
        (1, TARGET, "el7", "PACKAGE_NOT_FOUND", "aarch64"),
    ],
)
async def test_refused_requests_change_nothing(client, loaded, group, version, os_tag, code, words):
    with pytest.raises(UpgradeRefused) as refused:
        await start_upgrade(client, loaded, group, version, os_tag, task_queue="unused")
    assert refused.value.code == code
    assert words in refused.value.message
    assert loaded.list_tasks()[1] == 0
    assert loaded.get_group(1).active_task_id is None
    assert loaded.get_group(1).version == OLD


async def test_unavailable_group_is_refused(client, store):
    group = ArbitrationGroup(
        id=1, name="g1", version=OLD, status=GroupStatus.UNAVAILABLE, services=[service(1)]
    )
    store.load_inventory(Inventory(groups=[group], packages=[package(TARGET)]))
    with pytest.raises(UpgradeRefused, match="only a running group"):
        await start_upgrade(client, store, 1, TARGET, "el7", task_queue="unused")
    assert store.list_tasks()[1] == 0


def test_versions_compare_numerically():
    assert FullVersion.parse("4.3.10.0-1") > FullVersion.parse("4.3.9.0-9")
    assert FullVersion.parse("4.3.4.0-200000022024070119") > FullVersion.parse(
        "4.3.4.0-100000022024070119"
    )
    with pytest.raises(VersionError):
        FullVersion.parse("4.3.4-1")


def test_observer_version_is_parsed_from_its_banner():
    banner = (
        "observer (OceanBase_CE 4.3.4.0)\n\nREVISION: 200000022024070119-0a1b2c\n"
        "BUILD_BRANCH: master\n"
    )
    assert parse_observer_version(banner) == TARGET
    assert parse_observer_version("bash: observer: command not found") is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("host", "host name with spaces"),
        ("install_path", "/home/admin/$(reboot)"),
        ("install_path", "relative/path"),
        ("run_user", "admin;id"),
        ("arch", "sparc"),
        ("svr_port", 70000),
    ],
)
def test_unsafe_service_values_are_rejected(field, value):
    data = service(1).model_dump()
    data[field] = value
    with pytest.raises(ValueError):
        ArbitrationService(**data)


@pytest.mark.parametrize(
    "flag, value, words",
    [
        ("--host-wait", "1e300", "--host-wait: Input should be less than or equal to 604800"),
        ("--host-wait", "inf", "--host-wait: Input should be a finite number"),
        ("--decision-timeout", "-5", "--decision-timeout: Input should be greater than or equal to 1"),
        ("--decision-timeout", "nan", "--decision-timeout: Input should be a finite number"),
    ],
)
def test_upgrade_durations_out_of_range_are_refused_before_anything_is_recorded(
    flag, value, words, tmp_path, monkeypatch, capsys
):
    from starter import cli

    def leave(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(cli, "exit_now", leave)
    monkeypatch.setenv("ARBUP_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("ARBUP_DB_URL", raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.main(["upgrade", "1", "--full-version", TARGET, "--os", "el7", f"{flag}={value}"])
    assert exited.value.code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "arbup.db").exists()
