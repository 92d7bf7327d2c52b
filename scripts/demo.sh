#!/usr/bin/env bash
# The README's main job, end to end on a fresh machine, with progress shown.
# Today: set up, print what the kernel picked on this CPU, run the kernel benchmark (--quick).
# The export → flash → on-device API → pipeline bench steps join here as their issues land.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${SHELFRANK_OUT:-out}
mkdir -p "$out"

scripts/setup.sh
printf '\n==> shelfrank info\n' >&2
.venv/bin/shelfrank info
printf '\n==> shelfrank bench kernel --quick (report in %s/bench_kernel.{md,json})\n' "$out" >&2
.venv/bin/shelfrank bench kernel --quick --json "$out/bench_kernel.json" --md "$out/bench_kernel.md"
