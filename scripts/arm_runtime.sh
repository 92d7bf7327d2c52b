#!/usr/bin/env bash
# The whole device runtime on emulated aarch64 (Debian 12 arm64 root, CPython 3.11, aarch64 wheels,
# the cross-compiled shelfrank._native), without binfmt_misc: see DESIGN.md "Real parts in tests".
#
# Run locally (root, Debian 12 x86-64, after scripts/setup.sh --system --export: .venv has
# shelfrank and onnx, whose versions the aarch64 side installs too):
#   scripts/arm_runtime.sh            all steps; measured on 2 busy cores: from nothing ~3 min
#                                     (root ~25-80 s, network bound), cached ~2 min (the two
#                                     emulated pytest runs ~1 min each, parity 10 s)
#   scripts/arm_runtime.sh STEP...    root wheels module site bundle test-a72 test-a76 parity
#                                     sr-wheels install-runtime
#   ARM_KEEP_GOING=1 scripts/...      run every later step even when a test step failed
# Steps:
#   root      debootstrap --foreign --arch=arm64 --variant=minbase bookworm build/arm64-root (the
#             mirror apt uses on this host), then every downloaded .deb unpacked with dpkg-deb -x
#             (no second stage: it would run aarch64 programs). Cached: build/arm64-root/.shelfrank-root
#   wheels    aarch64 cp311 wheels from the x86 pip (--platform manylinux*_aarch64 --only-binary
#             --target build/arm64-root/opt/sr/site), at the versions installed in .venv (the
#             same versions the x86 side runs). Cached: opt/sr/.shelfrank-wheels
#   module    shelfrank._native cross-compiled with aarch64-linux-gnu-g++ against the root's
#             libpython3.11-dev headers and .venv's pybind11 (flags as CMakeLists.txt). Cached
#             on the hash of sources + flags: build/arm64-native/
#   site      the pure-Python package laid out as the wheel does (pyproject wheel.packages) +
#             the .so into opt/sr/site/shelfrank; the same layout with the x86 .so from .venv in
#             build/arm-x86-site (so both sides run this tree's Python code); tests/ and
#             pyproject.toml copied to opt/sr/repo
#   bundle    the device test bundle built on x86 (shelfrank.testing.build_device_bundle) into
#             opt/sr/bundle (+ bundle.pub): SHELFRANK_TEST_BUNDLE for the emulated tests
#   test-a72  pytest tests/native/test_topk.py tests/native/test_two_pass.py tests/device under
#             qemu -cpu cortex-a72 (Pi 4): active_isa() must be neon; test-a76: -cpu cortex-a76
#             (dotprod): neon_dot. ARM_TESTS="tests/native/test_two_pass.py" runs only those
#             (e.g. `ARM_TESTS=... scripts/arm_runtime.sh module site test-a72 test-a76`)
#   parity    scripts/arm/parity.py on x86 and under both CPUs; result in build/arm-parity.json
#   sr-wheels shelfrank's own aarch64 wheels, cp310 and cp311 (scripts/build_wheels.py: cross-
#             compiled by CMake, checked, tagged manylinux_2_X_aarch64) into build/wheels/
#   install-runtime  the issue's done-when: the bare root (its python has no numpy, no shelfrank)
#             + `shelfrank flash --install-runtime --python <the root's python>` with the cp311
#             wheel and build/wheelhouse/aarch64-cp311 (fetched by scripts/setup.sh --wheelhouse),
#             a cross-install (see docs/install.md), ending in flash's health check with the new
#             venv's python; then a smoke test under -cpu cortex-a72 with PREFIX/runtime/venv only
#
# How the emulated python runs: opt/sr/bin/python3 (from scripts/arm/python.in) is an x86 shell
# script that execs `qemu-aarch64-static -L build/arm64-root -0 <itself> .../usr/bin/python3.11`;
# sys.executable is that script, so tests that start `sys.executable` work too. The CPU model is
# QEMU_CPU. The root's /proc/cpuinfo is an empty directory on purpose: with -L, a path missing in
# the root falls through to the host, and onnxruntime's cpuinfo segfaults parsing the host's x86
# /proc/cpuinfo + /sys topology as ARM; unreadable, cpuinfo init fails cleanly (one stderr line
# "Error in cpuinfo ..." per process) and onnxruntime uses getauxval HWCAPs.
set -euo pipefail
unset SHELFRANK_FORCE_ISA

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT_DIR"

ROOTFS="$ROOT_DIR/build/arm64-root"
SR="$ROOTFS/opt/sr"
SITE="$SR/site"
REPO_COPY="$SR/repo"
BUNDLE="$SR/bundle"
ARM_PY="$SR/bin/python3"
NATIVE_DIR="$ROOT_DIR/build/arm64-native"
X86_SITE="$ROOT_DIR/build/arm-x86-site"
ARM_TESTS="${ARM_TESTS:-tests/native/test_topk.py tests/native/test_two_pass.py tests/device}"
WORK="$ROOT_DIR/build/arm-work"
PARITY_JSON="$ROOT_DIR/build/arm-parity.json"
VENV_PY="$ROOT_DIR/.venv/bin/python"
QEMU="$(command -v qemu-aarch64-static || true)"
SUITE=bookworm
INCLUDE=python3,python3-venv,libpython3.11-dev
WHEELS=(numpy onnxruntime tokenizers cryptography msgspec pytest hypothesis onnx matplotlib)  # + what tests import
SO_NAME=_native.cpython-311-aarch64-linux-gnu.so
SR_WHEELS="$ROOT_DIR/build/wheels"
DEPS_WHEELHOUSE="$ROOT_DIR/build/wheelhouse/aarch64-cp311"
FLASH_PREFIX="$ROOTFS/opt/shelfrank"

# Tests deselected inside the emulated root: "CPU|NODEID|reason" (CPU: a -cpu model, or * for
# both), each printed with its reason by the test steps. The `crash` marker (kill -9 at many
# points) is excluded with -m "not crash". Everything else runs, the HTTP sync tests with their
# real 127.0.0.1 server and injected faults included (they pass under emulation, ~10 s), and the
# tests that start `sys.executable` (through opt/sr/bin/python3, see above).
DESELECT=()

log() { printf '\n== %s\n' "$*"; }
die() {
    printf 'arm_runtime: error: %s\n' "$*" >&2
    exit 1
}
run() {
    printf '+ %s\n' "$*"
    "$@"
}
declare -A TIMES=()

ensure_tools() {  # CMD:PACKAGE ...
    local pair missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        run apt-get update -q
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    else
        die "missing tools; install them with: sudo apt-get install ${missing[*]}"
    fi
}

# The Debian mirror this host's apt uses (deb822 URIs: or one-line `deb URL bookworm main`).
host_mirror() {
    local f url
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        url="$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) {print $i; exit}}
                    /^deb / {for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/ && $i ~ /\/debian\/?$/) {print $i; exit}}' "$f")"
        [ -n "$url" ] && { printf '%s' "${url%/}"; return 0; }
    done
    printf 'http://deb.debian.org/debian'
}

step_root() {
    log "arm64 Debian root (debootstrap --foreign, .debs unpacked; no binfmt, no second stage)"
    local mirror stamp_want
    mirror="${ARM_MIRROR:-$(host_mirror)}"
    stamp_want="$SUITE arm64 minbase $INCLUDE $mirror"
    if [ -f "$ROOTFS/.shelfrank-root" ] && [ "$(cat "$ROOTFS/.shelfrank-root")" = "$stamp_want" ]; then
        echo "cached: $ROOTFS ($stamp_want)"
    else
        ensure_tools debootstrap:debootstrap "qemu-aarch64-static:qemu-user-static" dpkg-deb:dpkg
        [ -e "$ROOTFS" ] && run rm -rf "$ROOTFS"  # a partial or different root
        mkdir -p "$(dirname "$ROOTFS")"
        run debootstrap --foreign --arch=arm64 --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS" "$mirror"
        local d n=0
        for d in "$ROOTFS"/var/cache/apt/archives/*.deb; do
            dpkg-deb -x "$d" "$ROOTFS"
            n=$((n + 1))
        done
        echo "unpacked $n .deb files"
        printf '%s' "$stamp_want" >"$ROOTFS/.shelfrank-root"
    fi
    # See the header: keeps onnxruntime's cpuinfo away from the host's /proc/cpuinfo and /sys.
    [ -f "$ROOTFS/proc/cpuinfo" ] && rm -f "$ROOTFS/proc/cpuinfo"
    mkdir -p "$ROOTFS/proc/cpuinfo" "$SR/bin"
    [ -n "$QEMU" ] || QEMU="$(command -v qemu-aarch64-static)"
    sed -e "s|@ROOTFS@|$ROOTFS|g" -e "s|@QEMU@|$QEMU|g" scripts/arm/python.in >"$ARM_PY"
    chmod +x "$ARM_PY"
    run env QEMU_LD_PREFIX="$ROOTFS" "$QEMU" -L "$ROOTFS" "$ROOTFS/usr/bin/python3.11" \
        -c 'import sys, platform; print(sys.version.split()[0], platform.machine())'
}

venv_version() { "$VENV_PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1"; }

step_wheels() {
    log "aarch64 wheels (x86 pip --platform manylinux*_aarch64 --only-binary=:all: --target)"
    [ -x "$VENV_PY" ] || die "no .venv: run scripts/setup.sh first"
    local reqs=() w v
    for w in "${WHEELS[@]}"; do
        v="$(venv_version "$w" 2>/dev/null)" || die "$w is not installed in .venv (scripts/setup.sh --export installs onnx)"
        reqs+=("$w==$v")
    done
    if [ -f "$SR/.shelfrank-wheels" ] && [ "$(cat "$SR/.shelfrank-wheels")" = "${reqs[*]}" ] && [ -d "$SITE" ]; then
        echo "cached: ${reqs[*]}"
        return 0
    fi
    rm -rf "$SITE" "$SR/.shelfrank-wheels"
    # --target makes pip compare against .venv's packages and print resolver "conflicts" that do
    # not concern the target folder; its output is filtered to the summary.
    mkdir -p "$WORK"
    local rc=0
    run "$VENV_PY" -m pip install -q --disable-pip-version-check --no-warn-conflicts \
        --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_28_aarch64 \
        --python-version 3.11 --implementation cp --abi cp311 --only-binary=:all: \
        --target "$SITE" "${reqs[@]}" >"$WORK/pip-aarch64.log" 2>&1 || rc=$?
    grep -v "^WARNING: Location 'file:" "$WORK/pip-aarch64.log" || true
    [ "$rc" = 0 ] || die "pip install of the aarch64 wheels failed (exit $rc)"
    [ -d "$SITE/numpy" ] && [ -d "$SITE/onnxruntime" ] || die "the aarch64 wheels did not install into $SITE"
    printf '%s' "${reqs[*]}" >"$SR/.shelfrank-wheels"
    du -sh "$SITE"
}

step_module() {
    log "shelfrank._native for aarch64 (aarch64-linux-gnu-g++, root's Python 3.11 headers)"
    ensure_tools aarch64-linux-gnu-g++:g++-aarch64-linux-gnu aarch64-linux-gnu-objdump:binutils-aarch64-linux-gnu
    local pyinc="$ROOTFS/usr/include/python3.11" pybind
    [ -f "$pyinc/Python.h" ] || die "$pyinc/Python.h missing: libpython3.11-dev is not in the root"
    pybind="$("$VENV_PY" -c 'import pybind11; print(pybind11.get_include())')"
    # As CMakeLists.txt: C++17, Release, -march=armv8-a -mno-outline-atomics (Cortex-A72: armv8.0,
    # no LSE), dotprod only by pragma in topk_neon_dot.cpp, -ffp-contract=off on common.cpp,
    # topk.cpp and two_pass.cpp; pybind11_add_module's -fvisibility=hidden.
    local cxx=(aarch64-linux-gnu-g++ -std=c++17 -O3 -DNDEBUG -fPIC -fvisibility=hidden -pthread
        -march=armv8-a -mno-outline-atomics -Wall -Wextra -Inative/include)
    local py_flags=(-isystem "$pyinc" -idirafter "$ROOTFS/usr/include" -isystem "$pybind")
    local srcs=(native/src/*.cpp native/bindings/module.cpp) hash
    hash="$( {
        printf '%s\n' "${cxx[*]}" "$pybind" "$(aarch64-linux-gnu-g++ --version | head -1)"
        cat native/include/shelfrank/* native/src/* native/bindings/module.cpp "$pyinc/patchlevel.h"
        printf 'fp-contract-off: common topk two_pass\n'  # the per-file flags below change the hash
        "$VENV_PY" -c 'import pybind11; print(pybind11.__version__)'
    } | sha256sum | cut -c1-16)"
    if [ -f "$NATIVE_DIR/$SO_NAME" ] && [ "$(cat "$NATIVE_DIR/hash" 2>/dev/null)" = "$hash" ]; then
        echo "cached: $NATIVE_DIR/$SO_NAME ($hash)"
        return 0
    fi
    rm -rf "$NATIVE_DIR"
    mkdir -p "$NATIVE_DIR"
    local f b extra pids=() objs=()
    for f in "${srcs[@]}"; do
        b="$(basename "$f" .cpp)"
        extra=()
        case "$b" in
            common | topk | two_pass) extra=(-ffp-contract=off) ;;
            module) extra=("${py_flags[@]}") ;;
        esac
        objs+=("$NATIVE_DIR/$b.o")
        printf '+ %s %s -c %s\n' "${cxx[*]}" "${extra[*]}" "$f"
        "${cxx[@]}" "${extra[@]}" -c "$f" -o "$NATIVE_DIR/$b.o" &
        pids+=($!)
        if [ "${#pids[@]}" -ge "$(nproc)" ]; then wait "${pids[0]}" || die "compiling failed"; pids=("${pids[@]:1}"); fi
    done
    for f in "${pids[@]}"; do wait "$f" || die "compiling failed"; done
    run aarch64-linux-gnu-g++ -shared -pthread -s -o "$NATIVE_DIR/$SO_NAME" "${objs[@]}"
    # The same guarantees native_tests.sh checks on the kernel objects.
    local o bad=0
    for o in "${objs[@]}"; do
        case "$o" in */topk_neon_dot.o) continue ;; esac
        if aarch64-linux-gnu-objdump -d --no-show-raw-insn "$o" | grep -qE '\s(s|u|us|su)dot\s'; then
            echo "  $o: dotprod instruction outside topk_neon_dot.cpp" && bad=1
        fi
    done
    if aarch64-linux-gnu-objdump -dr "${objs[@]}" | grep -qE '__aarch64_(cas|swp|ldadd|ldclr|ldeor|ldset)'; then
        echo "  outline-atomic helper calls: -mno-outline-atomics did not reach every object" && bad=1
    fi
    [ "$bad" = 0 ] || die "the aarch64 module uses instructions a Cortex-A72 lacks"
    printf '%s' "$hash" >"$NATIVE_DIR/hash"
    ls -l "$NATIVE_DIR/$SO_NAME"
}

# layout DEST SO: the package as the wheel lays it out (pyproject [tool.scikit-build] wheel.packages).
layout() {
    local dest="$1" so="$2"
    rm -rf "$dest/shelfrank"
    cp -r src/shelfrank "$dest/shelfrank"
    cp -r device "$dest/shelfrank/device"
    cp -r export "$dest/shelfrank/export"
    cp -r firmware_configs "$dest/shelfrank/firmware_configs"
    find "$dest/shelfrank" -name __pycache__ -prune -exec rm -rf {} +
    rm -f "$dest"/shelfrank/_native*.so
    cp "$so" "$dest/shelfrank/"
}

step_site() {
    log "the shelfrank package laid out as the wheel does (aarch64 and x86)"
    [ -f "$NATIVE_DIR/$SO_NAME" ] || die "no $NATIVE_DIR/$SO_NAME: run the module step"
    layout "$SITE" "$NATIVE_DIR/$SO_NAME"
    local x86_so
    # find_spec of the module itself: an editable install keeps the .so apart from the sources
    x86_so="$("$VENV_PY" -c 'import importlib.util
print(importlib.util.find_spec("shelfrank._native").origin)')"
    [ -f "$x86_so" ] || die "no x86 shelfrank._native in .venv: run scripts/setup.sh"
    local newest
    newest="$(find native -newer "$x86_so" -type f | head -3)"
    [ -z "$newest" ] || echo "warning: $x86_so is older than ${newest//$'\n'/, }: the x86 side runs an old kernel (rerun scripts/setup.sh)"
    mkdir -p "$X86_SITE"
    layout "$X86_SITE" "$x86_so"
    rm -rf "$REPO_COPY"
    mkdir -p "$REPO_COPY"
    cp -r tests pyproject.toml "$REPO_COPY/"
    find "$REPO_COPY" \( -name __pycache__ -o -name .pytest_cache -o -name .hypothesis \) -prune -exec rm -rf {} +
    echo "aarch64: $SITE/shelfrank   x86: $X86_SITE/shelfrank   tests: $REPO_COPY"
}

x86_py() { env PYTHONPATH="$X86_SITE" "$VENV_PY" "$@"; }
arm_py() {  # arm_py CPU ARGS...
    local cpu="$1"
    shift
    env QEMU_CPU="$cpu" PYTHONPATH="$SITE" "$ARM_PY" "$@"
}

step_bundle() {
    log "device test bundle, built on x86 (SHELFRANK_TEST_BUNDLE for the emulated run)"
    rm -rf "$WORK/bundle-build" "$BUNDLE" "$BUNDLE.pub"
    mkdir -p "$WORK"
    x86_py -c 'import shutil, sys
from pathlib import Path
from shelfrank.testing import build_device_bundle
bundle, pub = build_device_bundle(Path(sys.argv[1]))
shutil.copytree(bundle, sys.argv[2])
shutil.copy(pub, sys.argv[2] + ".pub")
print("bundle:", sys.argv[2], "key:", sys.argv[2] + ".pub")' "$WORK/bundle-build" "$BUNDLE"
}

step_test_cpu() {  # CPU EXPECTED_ISA
    local cpu="$1" isa="$2" got
    log "pytest under qemu -cpu $cpu (expect active_isa() = $isa)"
    [ -d "$BUNDLE" ] || die "no bundle at $BUNDLE: run the bundle step"
    [ -f "$SITE/shelfrank/$SO_NAME" ] || die "no $SITE/shelfrank/$SO_NAME: run the site step (after wheels)"
    got="$(arm_py "$cpu" -c 'import shelfrank.device as d; print(d.active_isa(), ",".join(d.capabilities()))' 2>/dev/null | tail -1)" || true
    echo "active_isa, capabilities: $got"
    [ "${got%% *}" = "$isa" ] || die "under -cpu $cpu active_isa() is '${got%% *}', expected $isa"
    local args=() d
    echo "deselected inside the emulated root:"
    echo "  -m 'not crash' (tests/device/test_crash.py): kill -9 at many points; platform-independent Python, proven on x86 (DESIGN.md)"
    local dcpu rest
    for d in "${DESELECT[@]}"; do
        dcpu="${d%%|*}" rest="${d#*|}"
        [ "$dcpu" = "*" ] || [ "$dcpu" = "$cpu" ] || continue
        echo "  ${rest%%|*}: ${rest#*|}"
        args+=(--deselect "${rest%%|*}")
    done
    # Runs from the copy of the repo's tests and pyproject.toml (its pytest config) in the root.
    (cd "$REPO_COPY" && run env QEMU_CPU="$cpu" PYTHONPATH="$SITE" SHELFRANK_TEST_BUNDLE="$BUNDLE" \
        HYPOTHESIS_STORAGE_DIRECTORY="$WORK/hypothesis" "$ARM_PY" -m pytest $ARM_TESTS \
        -m "not crash" -p no:cacheprovider -q "${args[@]}") || return 1
}

step_parity() {
    log "x86 <-> aarch64 parity (scripts/arm/parity.py): kernel bit-exact, encoder cos >= 0.999, top-10"
    [ -d "$BUNDLE" ] || die "no bundle at $BUNDLE: run the bundle step"
    [ -f "$SITE/shelfrank/$SO_NAME" ] || die "no $SITE/shelfrank/$SO_NAME: run the site step (after wheels)"
    mkdir -p "$WORK/parity"
    rm -rf "$WORK/parity"/*
    local pub="$BUNDLE.pub" cpu
    run x86_py scripts/arm/parity.py dump "$BUNDLE" "$pub" "$WORK/parity/state-x86" "$WORK/parity/x86.json"
    for cpu in cortex-a72 cortex-a76; do
        run arm_py "$cpu" scripts/arm/parity.py dump "$BUNDLE" "$pub" "$WORK/parity/state-$cpu" \
            "$WORK/parity/aarch64-$cpu.json"
    done
    run x86_py scripts/arm/parity.py compare "$PARITY_JSON" "$WORK/parity/x86.json" \
        "$WORK/parity/aarch64-cortex-a72.json" "$WORK/parity/aarch64-cortex-a76.json"
}

step_sr_wheels() {
    log "shelfrank's aarch64 wheels (scripts/build_wheels.py: cp310 + cp311, cross-compiled and checked)"
    run "$VENV_PY" scripts/build_wheels.py wheels
}

step_install_runtime() {
    log "flash --install-runtime into the bare arm64 root, health check, smoke test (-cpu cortex-a72)"
    [ -d "$BUNDLE" ] || die "no bundle at $BUNDLE: run the bundle step"
    [ -d "$X86_SITE/shelfrank" ] || die "no $X86_SITE: run the site step"
    compgen -G "$SR_WHEELS/shelfrank-*-cp311-cp311-manylinux_*_aarch64.whl" >/dev/null ||
        die "no cp311 aarch64 shelfrank wheel in $SR_WHEELS: run the sr-wheels step"
    [ -f "$DEPS_WHEELHOUSE/.shelfrank-deps" ] ||
        die "no dependency wheelhouse $DEPS_WHEELHOUSE: scripts/setup.sh --wheelhouse fetches it from PyPI"
    # Bare: the root's python alone (the other steps' opt/sr/site is only ever on PYTHONPATH).
    if env -u PYTHONPATH "$ARM_PY" -c 'import numpy' >/dev/null 2>&1 ||
        env -u PYTHONPATH "$ARM_PY" -c 'import shelfrank' >/dev/null 2>&1; then
        die "the root's python imports numpy or shelfrank by itself: the root is not bare"
    fi
    echo "bare: the root's python3.11 imports neither numpy nor shelfrank"
    rm -rf "$FLASH_PREFIX"
    # flash runs on x86 from this tree (build/arm-x86-site); the root's python is foreign to it, so
    # flash cross-installs: the root's python makes the venv, the x86 pip fills it (--platform).
    run env QEMU_CPU=cortex-a72 PYTHONPATH="$X86_SITE" "$VENV_PY" -m shelfrank.cli flash "$BUNDLE" \
        --board rpi4 --to "$FLASH_PREFIX" --public-key "$BUNDLE.pub" --python "$ARM_PY" \
        --install-runtime --wheelhouse "$SR_WHEELS" --wheelhouse "$DEPS_WHEELHOUSE"
    local venv="$FLASH_PREFIX/runtime/venv"
    run env -u PYTHONPATH QEMU_CPU=cortex-a72 "$venv/bin/shelfrank" --version
    # The smoke test: only the runtime venv (no PYTHONPATH), a Cortex-A72, the flashed bundle.
    local smoke=(env -u PYTHONPATH QEMU_CPU=cortex-a72 "$venv/bin/python" - "$FLASH_PREFIX")
    "${smoke[@]}" 2>&1 <<'EOF' | grep -v '^Error in cpuinfo' || die "the smoke test with $venv failed"
import platform, sys
import onnxruntime, shelfrank
import shelfrank.device as d

prefix = sys.argv[1]
for mod in (shelfrank, onnxruntime):
    if not mod.__file__.startswith(prefix + "/runtime/venv/"):
        sys.exit(f"smoke: {mod.__name__} imported from {mod.__file__}, not from the runtime venv")
rec = d.Recommender.open(prefix + "/current")
try:
    got = [r.item_id for r in rec.recommend("smoke-user", k=5)]
finally:
    rec.close()
if platform.machine() != "aarch64" or d.active_isa() != "neon" or len(got) != 5:
    sys.exit(f"smoke: machine {platform.machine()}, isa {d.active_isa()}, {got}")
print("smoke:", platform.machine(), d.active_isa(), "recommend:", " ".join(got))
EOF
}

usage() {
    sed -n '2,11s/^# \{0,1\}//p' "$0"
    exit 2
}

ALL=(root wheels module site bundle test-a72 test-a76 parity sr-wheels install-runtime)
steps=()
for a in "$@"; do
    case "$a" in
        root | wheels | module | site | bundle | test-a72 | test-a76 | parity | sr-wheels | install-runtime) steps+=("$a") ;;
        -h | --help) usage ;;
        *) echo "unknown argument: $a" >&2 && usage ;;
    esac
done
[ "${#steps[@]}" -gt 0 ] || steps=("${ALL[@]}")

# Each step runs in a subshell with errexit on (a `cmd || ...` caller would switch errexit off
# inside the step); a failed step stops the run unless ARM_KEEP_GOING is set.
start=$SECONDS
failed=()
for s in "${steps[@]}"; do
    t0=$SECONDS
    set +e
    (
        set -e
        case "$s" in
            test-a72) step_test_cpu cortex-a72 neon ;;
            test-a76) step_test_cpu cortex-a76 neon_dot ;;
            sr-wheels) step_sr_wheels ;;
            install-runtime) step_install_runtime ;;
            *) "step_$s" ;;
        esac
    )
    rc=$?
    set -e
    TIMES[$s]=$((SECONDS - t0))
    printf -- '-- %s: %d s%s\n' "$s" "${TIMES[$s]}" "$([ "$rc" = 0 ] || echo " (FAILED, exit $rc)")"
    [ "$rc" = 0 ] || failed+=("$s")
    if [ "${#failed[@]}" -gt 0 ] && [ -z "${ARM_KEEP_GOING:-}" ]; then break; fi
done
log "timings"
for s in "${steps[@]}"; do
    [ -n "${TIMES[$s]:-}" ] && printf '  %-9s %5d s\n' "$s" "${TIMES[$s]}"
done
printf '  %-9s %5d s\n' total $((SECONDS - start))
[ "${#failed[@]}" -eq 0 ] || die "failed: ${failed[*]}"
log "aarch64 runtime: all steps passed (${steps[*]})"
