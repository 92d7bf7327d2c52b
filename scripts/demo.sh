#!/usr/bin/env bash
# The README's main job, end to end on a fresh machine, with progress shown:
#   set up → export a bundle from the packaged MiniLM and the demo shop (quick preset) →
#   call the on-device API for a few shoppers (before/after new events) → kernel benchmark.
# Flashing to a target and the whole-pipeline bench join here with their issue.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${SHELFRANK_OUT:-out}
mkdir -p "$out"
step() { printf '\n==> %s\n' "$*" >&2; }

scripts/setup.sh --export
step "shelfrank info"
.venv/bin/shelfrank info

[ -f "$out/publisher.key" ] || .venv/bin/shelfrank keygen --out "$out/publisher.key"
step "shelfrank export --dataset demo --preset quick --out $out/bundle (about 7 minutes on 2 cores)"
.venv/bin/shelfrank export --dataset demo --preset quick --out "$out/bundle" --key "$out/publisher.key"

step "the on-device API (lean runtime: no torch) for a few shoppers"
.venv/bin/python examples/demo_shoppers.py "$out/bundle" --public-key "$out/publisher.key.pub"

step "shelfrank bench kernel --quick (report in $out/bench_kernel.{md,json})"
.venv/bin/shelfrank bench kernel --quick --json "$out/bench_kernel.json" --md "$out/bench_kernel.md"
step "done: bundle in $out/bundle (quality report: $out/bundle/quality.md)"
