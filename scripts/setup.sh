#!/usr/bin/env bash
# Set up oae from a checkout: system packages (as root), a virtualenv in .venv, and the
# package with its C hot path built by cffi. Safe to run again; prints what it does.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v tshark >/dev/null || need_apt+=(tshark)
command -v clang >/dev/null || need_apt+=(clang)   # fuzzing/sanitizer builds
command -v ip >/dev/null || need_apt+=(iproute2)
python3 -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"]+"/Python.h"))' \
  || need_apt+=(python3-dev)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if ((${#need_apt[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "[setup] apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "[setup] missing system packages (${need_apt[*]}); run as root to install them" >&2
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
echo "[setup] pip install -e '.[test,plot]' (builds the C extension)"
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test,plot]'
.venv/bin/python -c 'import oae; print("[setup] oae", oae.__version__, "ready")'
