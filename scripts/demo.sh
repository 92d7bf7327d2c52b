#!/usr/bin/env bash
# The README's main job, end to end on a fresh machine, with progress shown:
#   set up → export a bundle from the packaged MiniLM and the demo shop (quick preset) →
#   flash it to a local directory target (A/B slots) → call the on-device API for a few shoppers
#   (before/after new events) → bench the flashed bundle (--quick) and the kernel (--quick).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${SHELFRANK_OUT:-out}
mkdir -p "$out"
step() { printf '\n==> %s\n' "$*" >&2; }
start=$(date +%s)

scripts/setup.sh --export
step "shelfrank info"
.venv/bin/shelfrank info

[ -f "$out/publisher.key" ] || .venv/bin/shelfrank keygen --out "$out/publisher.key"
step "shelfrank export --dataset demo --preset quick --out $out/bundle (about 8 minutes on 2 cores)"
.venv/bin/shelfrank export --dataset demo --preset quick --out "$out/bundle" --key "$out/publisher.key"

step "shelfrank flash $out/bundle --board x86-64-dev --to $out/board"
.venv/bin/shelfrank flash "$out/bundle" --board x86-64-dev --to "$out/board" --public-key "$out/publisher.key.pub"
.venv/bin/shelfrank status "$out/board"

step "the on-device API on the flashed bundle (lean runtime: no torch) for a few shoppers"
.venv/bin/python examples/demo_shoppers.py "$out/board/current" --state "$out/board/state"

step "shelfrank bench $out/board/current --quick (report in $out/bench.{md,json})"
.venv/bin/shelfrank bench "$out/board/current" --quick --board x86-64-dev --baselines "$out/bundle.baselines" \
  --public-key "$out/publisher.key.pub" --json "$out/bench.json" --md "$out/bench.md" --plot "$out/bench.png"

step "shelfrank bench kernel --quick (report in $out/bench_kernel.{md,json})"
.venv/bin/shelfrank bench kernel --quick --json "$out/bench_kernel.json" --md "$out/bench_kernel.md"
step "done in $(( $(date +%s) - start )) s: bundle $out/bundle (quality: $out/bundle/quality.md), board $out/board"
