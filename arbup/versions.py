"""Full versions and package names of the OceanBase RPM.

A full version is ``<a.b.c.d>-<build>``: four dot-separated numbers, a dash and a
build number, for example ``4.3.4.0-200000022024070119``. The package file for a
target is ``oceanbase-<fullVersion>.<operatingSystem>.<arch>.rpm``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FULL_VERSION_RE = re.compile(
    r"^([0-9]{1,4})\.([0-9]{1,4})\.([0-9]{1,4})\.([0-9]{1,4})-([0-9]{1,30})\Z"
)
OS_TAG_RE = re.compile(r"^[a-z][a-z0-9]{1,15}\Z")
ARCHES = ("x86_64", "aarch64")
PACKAGE_NAME = "oceanbase"
PACKAGE_FILE_RE = re.compile(
    r"^(?P<name>[a-z][a-z0-9_-]*?)-(?P<full_version>\d+\.\d+\.\d+\.\d+-\d+)"
    r"\.(?P<os>[a-z][a-z0-9]+)\.(?P<arch>x86_64|aarch64)\.rpm$"
)


class VersionError(ValueError):
    """A version string or package name that does not follow the conventions."""


@dataclass(frozen=True, order=True)
class FullVersion:
    """A comparable ``<a.b.c.d>-<build>``; builds compare as numbers."""

    numbers: tuple[int, int, int, int]
    build: int

    @classmethod
    def parse(cls, text: str) -> FullVersion:
        match = FULL_VERSION_RE.match(text) if isinstance(text, str) else None
        if not match:
            raise VersionError(
                f"full version {text!r} is not of the form <a.b.c.d>-<build>, "
                "for example 4.3.4.0-200000022024070119"
            )
        a, b, c, d, build = match.groups()
        return cls((int(a), int(b), int(c), int(d)), int(build))

    @property
    def version(self) -> str:
        return ".".join(str(n) for n in self.numbers)

    def __str__(self) -> str:
        return f"{self.version}-{self.build}"


def check_full_version(text: str) -> str:
    """Return ``text`` if it is a valid full version, else raise VersionError."""
    FullVersion.parse(text)
    return text


def check_os_tag(text: str) -> str:
    if not isinstance(text, str) or not OS_TAG_RE.match(text):
        raise VersionError(
            f"operating system {text!r} is not a package OS tag such as el7, el8 or alios7"
        )
    return text


def check_arch(text: str) -> str:
    if text not in ARCHES:
        raise VersionError(f"architecture {text!r} is not one of {', '.join(ARCHES)}")
    return text


def package_file_name(full_version: str, os_tag: str, arch: str) -> str:
    return f"{PACKAGE_NAME}-{full_version}.{os_tag}.{arch}.rpm"


def parse_package_file_name(file_name: str) -> tuple[str, str, str, str]:
    """Split ``oceanbase-4.3.4.0-200000022024070119.el7.x86_64.rpm`` into
    (name, full version, OS tag, arch)."""
    match = PACKAGE_FILE_RE.match(file_name)
    if not match:
        raise VersionError(
            f"package file {file_name!r} is not named "
            "<name>-<a.b.c.d>-<build>.<os>.<arch>.rpm"
        )
    return match["name"], match["full_version"], match["os"], match["arch"]


def rpm_version_release_to_full(version_release: str) -> tuple[str, str | None]:
    """``4.3.4.0-200000022024070119.el7`` (rpm's VERSION-RELEASE) to the full
    version and the OS tag carried in the release."""
    version, _, release = version_release.strip().partition("-")
    build, _, dist = release.partition(".")
    full = f"{version}-{build}"
    check_full_version(full)
    return full, (dist or None)


_OBSERVER_NAME_RE = re.compile(r"OceanBase[_A-Za-z]*\s+(\d+\.\d+\.\d+\.\d+)")
_OBSERVER_REVISION_RE = re.compile(r"REVISION:\s*(\d+)")


def parse_observer_version(output: str) -> str | None:
    """The full version from ``observer -V`` output, or None if it has none.

    observer prints ``observer (OceanBase_CE 4.3.4.0)`` and a ``REVISION:`` line whose
    leading number is the build.
    """
    name = _OBSERVER_NAME_RE.search(output)
    revision = _OBSERVER_REVISION_RE.search(output)
    if not name or not revision:
        return None
    return f"{name.group(1)}-{revision.group(1)}"


def os_tag_from_os_release(text: str) -> str | None:
    """The package OS tag (el7, el8, alios7, ...) a host's /etc/os-release maps to."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"').strip("'")
    distro = fields.get("ID", "").lower()
    major = fields.get("VERSION_ID", "").split(".")[0]
    if not distro or not major.isdigit():
        return None
    if distro in {"centos", "rhel", "rocky", "almalinux", "ol", "anolis", "kylin"}:
        return f"el{major}"
    if distro in {"alinux", "alios"}:
        return f"alios{major}"
    return f"{distro}{major}"
