"""Real RPMs of the stand-in arbitration daemon, built with ``rpmbuild``.

``build_package`` turns ``assets/oceanbase.spec`` and ``assets/observer`` into
``oceanbase-<fullVersion>.<os>.<arch>.rpm``: Name ``oceanbase``, Version ``a.b.c.d``,
Release ``<build>.<os>``, relocatable (``Prefix: /home/admin/oceanbase``) so that
``rpm -Uvh --prefix=<installPath> <file>`` installs it anywhere. The version, build and
revision are baked into the packaged ``bin/observer``, which prints them for ``-V``.

The packages use a gzip payload and SHA-256 file digests so that the rpm of a real el7
host (4.11) could read them too, and carry no automatic dependencies; the only
requirement is the ``/bin/sh`` that rpmbuild always adds for the ``%pre`` scriptlet.
Each local host's rpm database provides it through ``build_base_package``'s package,
as ``bash`` does on a real el7 host (see hosts.py).

Every build runs in its own ``%_topdir`` under a temporary directory and the result is
moved into place atomically, so concurrent builds of the same package are safe.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

from arbup.versions import (
    FullVersion,
    check_arch,
    check_os_tag,
    package_file_name,
)

ASSETS = Path(__file__).resolve().parent / "assets"
BASE_PACKAGE_NAME = "arbup-localhost-base"


class PackageBuildError(RuntimeError):
    """rpmbuild failed, or produced something else than expected."""


def default_arch() -> str:
    return check_arch(platform.machine())


def _fill(template: str, fields: dict[str, str]) -> str:
    for key, value in fields.items():
        template = template.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z_]+@", template)
    if left:
        raise PackageBuildError(f"template fields left unfilled: {sorted(set(left))}")
    return template


def _build_time(build: int) -> str:
    """OceanBase build numbers end with the build's date and hour (...2024070119)."""
    digits = str(build)
    if len(digits) >= 10:
        try:
            stamp = datetime.strptime(digits[-10:], "%Y%m%d%H")
            return stamp.strftime("%b %d %Y %H:00:00")
        except ValueError:
            pass
    return "unknown"


def _query(rpm_file: Path) -> str | None:
    """``NAME|VERSION|RELEASE|ARCH`` of an intact package file, None otherwise."""
    with tempfile.TemporaryDirectory(prefix="arbup-rpmq-") as dbpath:
        # A throw-away --dbpath keeps these queries off the machine's own database.
        base = ["rpm", "--dbpath", dbpath]
        check = subprocess.run(
            [*base, "-K", "--nosignature", str(rpm_file)],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            return None
        query = subprocess.run(
            [
                *base,
                "-qp",
                "--qf",
                "%{NAME}|%{VERSION}|%{RELEASE}|%{ARCH}",
                str(rpm_file),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if query.returncode != 0:
        return None
    return query.stdout.strip()


def _rpmbuild(
    spec_text: str, sources: dict[str, bytes], target: str, want: str, out_file: Path
) -> Path:
    with tempfile.TemporaryDirectory(prefix="arbup-rpmbuild-") as tmp:
        top = Path(tmp)
        for sub in ("SPECS", "SOURCES", "BUILD", "BUILDROOT", "RPMS", "SRPMS", "tmp"):
            (top / sub).mkdir()
        for name, content in sources.items():
            path = top / "SOURCES" / name
            path.write_bytes(content)
            path.chmod(0o755)
        spec = top / "SPECS" / "package.spec"
        spec.write_text(spec_text, encoding="utf-8")
        command = [
            "rpmbuild",
            "-bb",
            "--target",
            target,
            "--define",
            f"_topdir {top}",
            "--define",
            f"_tmppath {top / 'tmp'}",
            "--dbpath",
            str(top / "tmp"),
            str(spec),
        ]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=_build_env(),
            cwd=top,
            check=False,
        )
        if result.returncode != 0:
            raise PackageBuildError(
                f"rpmbuild failed ({result.returncode}) for {out_file.name}:\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        built = [p for p in (top / "RPMS").rglob("*.rpm")]
        if len(built) != 1:
            raise PackageBuildError(f"rpmbuild produced {built}, expected one package")
        got = _query(built[0])
        if got != want:
            raise PackageBuildError(f"rpmbuild produced {got!r}, expected {want!r}")
        out_file.parent.mkdir(parents=True, exist_ok=True)
        staging = out_file.with_name(f".{out_file.name}.{os.getpid()}.tmp")
        shutil.copyfile(built[0], staging)
        os.replace(staging, out_file)
    return out_file


def _build_env() -> dict[str, str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
    }
    return env


def build_package(
    out_dir: Path,
    full_version: str,
    os_tag: str,
    arch: str | None = None,
    *,
    padding_mib: int = 0,
) -> Path:
    """Build (or reuse) ``out_dir/oceanbase-<fullVersion>.<os>.<arch>.rpm``.

    ``arch`` defaults to this machine's (``uname -m``). An existing file is reused if it
    is an intact package with the expected name, version, release and arch.
    ``padding_mib`` adds that much incompressible data (``share/padding.bin``), for
    packages as large as real ones.
    """
    version = FullVersion.parse(full_version)
    check_os_tag(os_tag)
    arch = check_arch(arch) if arch else default_arch()
    out_dir = Path(out_dir)
    out_file = out_dir / package_file_name(str(version), os_tag, arch)
    want = f"oceanbase|{version.version}|{version.build}.{os_tag}|{arch}"
    if out_file.is_file() and _query(out_file) == want:
        return out_file
    revision = hashlib.sha1(f"oceanbase-{version}".encode()).hexdigest()
    observer = _fill(
        (ASSETS / "observer").read_text(encoding="utf-8"),
        {
            "OB_VERSION": version.version,
            "OB_BUILD": str(version.build),
            "OB_REVISION_HASH": revision,
            "OB_BUILD_TIME": _build_time(version.build),
        },
    )
    sources = {"observer": observer.encode()}
    extra_install = extra_files = ""
    if padding_mib:
        sources["padding.bin"] = os.urandom(padding_mib * 1024 * 1024)
        extra_install = (
            "mkdir -p %{buildroot}%{ob_prefix}/share\n"
            "install -m 0644 %{_sourcedir}/padding.bin %{buildroot}%{ob_prefix}/share/"
        )
        extra_files = "%attr(0644,root,root) %{ob_prefix}/share/padding.bin"
    spec = _fill(
        (ASSETS / "oceanbase.spec").read_text(encoding="utf-8"),
        {
            "VERSION": version.version,
            "BUILD": str(version.build),
            "OS": os_tag,
            "EXTRA_INSTALL": extra_install,
            "EXTRA_FILES": extra_files,
        },
    )
    return _rpmbuild(spec, sources, arch, want, out_file)


def build_base_package(out_dir: Path, os_tag: str) -> Path:
    """Build (or reuse) the package a local host's rpm database starts with.

    It installs no files and provides ``/bin/sh`` and ``/bin/bash``, standing in for
    the OS packages (``bash``) that provide them in a real el7 host's rpm database.
    """
    check_os_tag(os_tag)
    major = re.search(r"(\d+)$", os_tag)
    os_major = major.group(1) if major else "0"
    out_dir = Path(out_dir)
    out_file = out_dir / f"{BASE_PACKAGE_NAME}-{os_major}-1.{os_tag}.noarch.rpm"
    want = f"{BASE_PACKAGE_NAME}|{os_major}|1.{os_tag}|noarch"
    if out_file.is_file() and _query(out_file) == want:
        return out_file
    spec = _fill(
        (ASSETS / "localhost-base.spec").read_text(encoding="utf-8"),
        {"OS": os_tag, "OS_MAJOR": os_major},
    )
    return _rpmbuild(spec, {}, "noarch", want, out_file)
