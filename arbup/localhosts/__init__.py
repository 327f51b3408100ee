"""Local arbitration hosts (sshd in mount namespaces on loopback addresses) and the
real RPMs of a stand-in arbitration daemon, for arbup's demo and integration tests."""

from arbup.localhosts.hosts import (
    DEFAULT_INSTALL_PATH,
    DEFAULT_SVR_PORT,
    KNOBS,
    HostCommandError,
    LocalHost,
    LocalHostError,
    client_key_path,
    create_hosts,
    known_hosts_path,
    load_hosts,
    stop_hosts,
)
from arbup.localhosts.packages import (
    PackageBuildError,
    build_base_package,
    build_package,
)

__all__ = [
    "DEFAULT_INSTALL_PATH",
    "DEFAULT_SVR_PORT",
    "KNOBS",
    "HostCommandError",
    "LocalHost",
    "LocalHostError",
    "PackageBuildError",
    "build_base_package",
    "build_package",
    "client_key_path",
    "create_hosts",
    "known_hosts_path",
    "load_hosts",
    "stop_hosts",
]
