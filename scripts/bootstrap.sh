#!/usr/bin/env bash
# Installs what arbup's demo and tests need on a fresh Debian or Ubuntu machine:
# OpenSSH's server (the local hosts), rpm and rpmbuild (the real packages), Chromium
# (the Web UI test drives it headless), and the Python virtualenv with the project
# and its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

need_apt=()
command -v /usr/sbin/sshd >/dev/null || need_apt+=(openssh-server)
command -v ssh-keygen >/dev/null || need_apt+=(openssh-client)
command -v rpmbuild >/dev/null || need_apt+=(rpm)
command -v nsenter >/dev/null || need_apt+=(util-linux)
command -v ps >/dev/null || need_apt+=(procps)
[[ -x /usr/bin/chromium ]] || need_apt+=(chromium)   # the Web UI browser test
if ((${#need_apt[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "bootstrap: ${need_apt[*]} missing; run as root or install them" >&2
    exit 1
  fi
  echo "bootstrap: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

stamp="$VENV/.installed"
if [[ ! -x $VENV/bin/python || ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "bootstrap: preparing the virtualenv in $VENV"
  [[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e '.[test]'
  touch "$stamp"
fi
