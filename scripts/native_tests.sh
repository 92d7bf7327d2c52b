#!/usr/bin/env bash
# Builds and runs the C++ kernel tests (native/tests/test_topk.cpp) without Python:
#   x86          host build with ASan + UBSan (abort on the first error); records its --digest
#   arm-build    aarch64 cross build (Release, no sanitizer) with native/cmake/aarch64-linux-gnu.cmake
#   arm-a72      under qemu -cpu cortex-a72 (Pi 4: no dotprod): must pick neon; forcing neon_dot
#                must fail with a clear error, not SIGILL
#   arm-a76      under qemu -cpu cortex-a76 (dotprod): must pick neon_dot; forcing neon must work
#   arm-objdump  no sdot/udot outside topk_neon_dot.cpp's object, no LSE atomics anywhere
#   digest       the int8 digests of the x86, cortex-a72 and cortex-a76 runs must be equal
#                (runs those three steps first)
#   arm          arm-a72 arm-a76 arm-objdump digest (digest needs the x86 run as its reference)
# Usage: scripts/native_tests.sh [--x86-only | --arm-only | STEP...]   (default: x86 arm)
# Builds go to build/native-x86-asan and build/native-aarch64 (git-ignored); rerunning is cheap.
# Missing tools are installed with apt-get when running as root, otherwise the script stops and
# names the packages.
set -euo pipefail

# The runs check what dispatch picks by itself; a pin left in the caller's environment would
# defeat that (steps that pin an ISA set it explicitly).
unset SHELFRANK_FORCE_ISA

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
X86_DIR=build/native-x86-asan
ARM_DIR=build/native-aarch64
ARM_SYSROOT=/usr/aarch64-linux-gnu
QEMU=qemu-aarch64-static
JOBS="$(nproc 2>/dev/null || echo 2)"

log() { printf '\n== %s\n' "$*"; }
die() {
    printf 'native_tests: error: %s\n' "$*" >&2
    exit 1
}
run() {  # print, then run
    printf '+ %s\n' "$*"
    "$@"
}

# ensure_tools CMD:PACKAGE ... — apt-get installs the packages whose command is missing (root
# only; one `apt-get update` first), else stops naming them.
ensure_tools() {
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

# configure DIR CMAKE_ARGS...: the generator is chosen only when DIR is new (CMake refuses to
# switch generators in an existing build folder).
configure() {
    local dir="$1"
    shift
    local gen=()
    if [ ! -f "$dir/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1; then gen=(-G Ninja); fi
    run cmake -S . -B "$dir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DSHELFRANK_BUILD_PYTHON=OFF \
        -DSHELFRANK_BUILD_TESTS=ON "$@"
    run cmake --build "$dir" --parallel "$JOBS"
}

# digest_of LOGFILE: the hex of the `digest <hex>` line.
digest_of() {
    local d
    d="$(sed -n 's/^digest \([0-9a-f]\{16\}\)$/\1/p' "$1")"
    [ -n "$d" ] || die "no digest line in $1"
    printf '%s' "$d"
}

# check_summary LOGFILE: the test program's last line must be `N passed, 0 failed`.
check_summary() {
    grep -Eq '^[0-9]+ passed, 0 failed$' "$1" || die "no 'N passed, 0 failed' line in $1"
}

step_x86() {
    log "x86-64: ASan + UBSan build and run"
    ensure_tools cmake:cmake g++:g++
    configure "$X86_DIR" -DSHELFRANK_SANITIZE=ON
    # -fno-sanitize-recover=all (CMakeLists.txt) makes UBSan fatal; these make ASan fatal too.
    run env ASAN_OPTIONS=halt_on_error=1:abort_on_error=1:detect_leaks=1 \
        UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        "$X86_DIR/test_topk" --digest 2>&1 | tee "$X86_DIR/run.log"
    check_summary "$X86_DIR/run.log"
    digest_of "$X86_DIR/run.log" >"$X86_DIR/digest"
    echo "x86 digest: $(cat "$X86_DIR/digest")"
}

step_arm_build() {
    log "aarch64: cross build (Release)"
    ensure_tools cmake:cmake aarch64-linux-gnu-g++:g++-aarch64-linux-gnu \
        aarch64-linux-gnu-objdump:binutils-aarch64-linux-gnu "$QEMU:qemu-user-static"
    configure "$ARM_DIR" -DCMAKE_TOOLCHAIN_FILE="$ROOT/native/cmake/aarch64-linux-gnu.cmake"
}

# qemu_run CPU LOGFILE [ENV=VALUE...] -- ARGS...: runs test_topk under qemu, output to LOGFILE;
# returns the exit status.
qemu_run() {
    local cpu="$1" logf="$2"
    shift 2
    local envs=()
    while [ "$1" != "--" ]; do
        envs+=("$1")
        shift
    done
    shift
    local rc=0
    printf '+ %s%s -L %s -cpu %s %s %s\n' "${envs[*]:+${envs[*]} }" "$QEMU" "$ARM_SYSROOT" "$cpu" \
        "$ARM_DIR/test_topk" "$*"
    env "${envs[@]}" "$QEMU" -L "$ARM_SYSROOT" -cpu "$cpu" "$ARM_DIR/test_topk" "$@" >"$logf" 2>&1 || rc=$?
    cat "$logf"
    if [ "$rc" -ge 128 ] || grep -q 'uncaught target signal' "$logf"; then
        die "test_topk died from a signal under -cpu $cpu (exit $rc): an instruction this CPU lacks?"
    fi
    return "$rc"
}

step_arm_cpu() {  # CPU EXPECTED_ISA
    local cpu="$1" isa="$2"
    log "aarch64 under qemu -cpu $cpu: expect $isa"
    qemu_run "$cpu" "$ARM_DIR/run-$cpu.log" -- --expect-isa "$isa" --digest ||
        die "test_topk failed under -cpu $cpu (log: $ARM_DIR/run-$cpu.log)"
    check_summary "$ARM_DIR/run-$cpu.log"
    digest_of "$ARM_DIR/run-$cpu.log" >"$ARM_DIR/digest-$cpu"
    echo "$cpu digest: $(cat "$ARM_DIR/digest-$cpu")"
}

step_arm_a72() {
    step_arm_cpu cortex-a72 neon
    log "aarch64 -cpu cortex-a72: SHELFRANK_FORCE_ISA=neon_dot must be refused cleanly"
    local rc=0 logf="$ARM_DIR/run-cortex-a72-force-neon_dot.log"
    qemu_run cortex-a72 "$logf" SHELFRANK_FORCE_ISA=neon_dot -- --expect-isa neon_dot || rc=$?
    [ "$rc" -ne 0 ] || die "forcing neon_dot on a Cortex-A72 did not fail"
    grep -q "SHELFRANK_FORCE_ISA: ISA 'neon_dot' is not available.*capabilities(): scalar, neon$" "$logf" ||
        die "forcing neon_dot on a Cortex-A72 failed (exit $rc) without the expected error message"
    echo "ok: refused with exit $rc and a message listing capabilities()"
}

step_arm_a76() {
    step_arm_cpu cortex-a76 neon_dot
    log "aarch64 -cpu cortex-a76: SHELFRANK_FORCE_ISA=neon must pin neon"
    qemu_run cortex-a76 "$ARM_DIR/run-cortex-a76-force-neon.log" SHELFRANK_FORCE_ISA=neon -- --expect-isa neon ||
        die "SHELFRANK_FORCE_ISA=neon failed under -cpu cortex-a76"
    check_summary "$ARM_DIR/run-cortex-a76-force-neon.log"
}

# mnemonics OBJECT: one instruction mnemonic per line.
mnemonics() {
    aarch64-linux-gnu-objdump -d --no-show-raw-insn "$1" | awk -F'\t' 'NF >= 2 { split($2, a, " "); print a[1] }'
}

step_arm_objdump() {
    log "aarch64 objects: dotprod only in topk_neon_dot.cpp.o, no LSE atomics (Cortex-A72 is armv8.0)"
    local objs o bad=0 n
    mapfile -t objs < <(find "$ARM_DIR/CMakeFiles" -name '*.o' | sort)
    [ "${#objs[@]}" -ge 10 ] || die "expected the kernel and test objects under $ARM_DIR/CMakeFiles, found ${#objs[@]}"
    local dot_re='^(s|u|us|su)dot$'
    local lse_re='^(casp?|swp|ld(add|clr|eor|set|smax|smin|umax|umin)|st(add|clr|eor|set|smax|smin|umax|umin))(a|al|l)?(b|h)?$'
    local name problems
    for o in "${objs[@]}"; do
        name="${o#"$ARM_DIR"/CMakeFiles/}"
        problems=""
        n="$(mnemonics "$o" | grep -cE "$dot_re" || true)"
        case "$o" in
            */topk_neon_dot.cpp.o) [ "$n" -gt 0 ] || problems+=" no sdot: the dotprod kernel is not built;" ;;
            *) [ "$n" -eq 0 ] || problems+=" $n dotprod instructions;" ;;
        esac
        n="$(mnemonics "$o" | grep -cE "$lse_re" || true)"
        [ "$n" -eq 0 ] || problems+=" $n LSE atomic instructions;"
        # Outline-atomic helpers mean -mno-outline-atomics did not reach this object.
        n="$(aarch64-linux-gnu-objdump -dr "$o" | grep -cE '__aarch64_(cas|swp|ldadd|ldclr|ldeor|ldset)' || true)"
        [ "$n" -eq 0 ] || problems+=" $n outline-atomic helper calls;"
        if [ -n "$problems" ]; then
            printf '  %-56s FAIL:%s\n' "$name" "$problems"
            bad=1
        else
            printf '  %-56s ok\n' "$name"
        fi
    done
    [ "$bad" = 0 ] || die "aarch64 objects use instructions a Cortex-A72 lacks"
}

step_digest() {
    log "digest: x86 == cortex-a72 == cortex-a76"
    local x a72 a76
    x="$(cat "$X86_DIR/digest")"
    a72="$(cat "$ARM_DIR/digest-cortex-a72")"
    a76="$(cat "$ARM_DIR/digest-cortex-a76")"
    echo "x86 $x  cortex-a72 $a72  cortex-a76 $a76"
    [ "$x" = "$a72" ] && [ "$x" = "$a76" ] || die "int8 results differ between x86 and aarch64"
}

usage() {
    sed -n '2,15s/^# \{0,1\}//p' "$0"
    exit 2
}

steps=()
for a in "$@"; do
    case "$a" in
        --x86-only) steps+=(x86) ;;
        --arm-only) steps+=(arm) ;;
        x86 | arm | arm-build | arm-a72 | arm-a76 | arm-objdump | digest) steps+=("$a") ;;
        -h | --help) usage ;;
        *) echo "unknown argument: $a" >&2 && usage ;;
    esac
done
[ "${#steps[@]}" -gt 0 ] || steps=(x86 arm)

# Each step runs at most once per invocation; later steps pull in what they need (so `digest`
# alone builds and runs everything it compares, and never compares stale files).
declare -A done_steps=()
need() {
    [ -z "${done_steps[$1]:-}" ] || return 0
    case "$1" in
        x86) step_x86 ;;
        arm-build) step_arm_build ;;
        arm-a72) need arm-build; step_arm_a72 ;;
        arm-a76) need arm-build; step_arm_a76 ;;
        arm-objdump) need arm-build; step_arm_objdump ;;
        digest) need x86; need arm-a72; need arm-a76; step_digest ;;
        arm) need arm-a72; need arm-a76; need arm-objdump; need digest ;;
    esac
    done_steps[$1]=1
}

start=$SECONDS
for s in "${steps[@]}"; do
    need "$s"
done
log "native tests passed (${steps[*]}) in $((SECONDS - start)) s"
