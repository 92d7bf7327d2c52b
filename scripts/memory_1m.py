"""Resident memory of ``recommend`` at 100k and 1M items: exact scan vs two-pass (issue 16, build 3).

Builds signed bundles on /tmp (cached: a second run reuses them) whose catalog is real embeddings
expanded to N — the all-MiniLM-L6-v2 embeddings of the Amazon Games titles
(``bench.kernel_data.load_real_embeddings``: $SHELFRANK_DATA or ``--real-embeddings NPY``), item j
being ``normalise(e[j mod M] + σ·g)`` (σ = 0.05 per coordinate for the copies, as
``shelfrank bench kernel``'s two-pass rows), int8-quantised — with the tiny test encoder and user
tower of ``shelfrank.testing`` (384-d). Each measurement is a fresh process: open the bundle, 20
shoppers with 10 events each, 50 ``recommend`` calls; it reports the peak (VmHWM) and the final
RSS split into anonymous memory (RssAnon: Python objects, arrays) and file-backed pages mapped
from the page cache (RssFile: the memory-mapped int8 rows, codes, libraries).

    .venv/bin/python scripts/memory_1m.py            # 100k and 1M, table + JSON
    .venv/bin/python scripts/memory_1m.py --sizes 100000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORK = Path(os.environ.get("SHELFRANK_MEM_DIR", "/tmp/shelfrank-mem"))
NOISE = 0.05
USERS, EVENTS, CALLS = 20, 10, 50
_CHUNK = 65_536
VARIANTS = ("", " (Black)", " (Blue)", " - Refurbished", " Bundle", " (Red)", " Deluxe", " (White)")


def _status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process in KiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(val.split()[0])
    return out


def expand(base: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from shelfrank.device.kernel import quantize_rows

    rng = np.random.default_rng(seed)
    m, d = base.shape
    rows, scales = np.empty((n, d), np.int8), np.empty(n, np.float32)
    for lo in range(0, n, _CHUNK):
        j = np.arange(lo, min(n, lo + _CHUNK))
        v = base[j % m].copy()
        copy = j >= m
        if copy.any():
            v[copy] += rng.standard_normal((int(copy.sum()), d), dtype=np.float32) * NOISE
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        rows[j], scales[j] = quantize_rows(np.ascontiguousarray(v))
    return rows, scales


def build(n: int, emb: np.ndarray, titles: list[str]) -> Path:
    """A signed bundle with an ``n``-item catalog under WORK (reused when it is there)."""
    from shelfrank.device.catalog_files import CatalogData, write_catalog_dir
    from shelfrank.device.codes import catalog_mean, derive_codes
    from shelfrank.testing import build_device_bundle, resign_bundle

    root = WORK / f"n{n}"
    bundle = root / "bundle"
    if (bundle / "manifest.json").is_file() and json.loads((bundle / "manifest.json").read_text())["catalog"][
        "count"
    ] == n:
        return bundle
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    root.mkdir(parents=True)
    build_device_bundle(root, n_items=60, dim=emb.shape[1], max_events=EVENTS)
    rows, scales = expand(emb, n)
    mean = catalog_mean(rows, scales)
    m = len(titles)
    rng = np.random.default_rng(1)
    cats = [f"Category {i}" for i in range(40)]
    brands = [f"Brand {i}" for i in range(500)]
    items = [
        {
            "item_id": f"SKU-{j:08d}",
            "title": titles[j % m] + VARIANTS[(j // m) % len(VARIANTS)],
            "category": cats[j % 40],
            "brand": brands[(j * 7) % 500],
            "price": float(5 + (j % 200)),
            "in_stock": bool(j % 10),
            "popularity": float(p),
        }
        for j, p in enumerate(rng.pareto(1.5, n).tolist())
    ]
    data = CatalogData(items, rows, scales, None, derive_codes(rows, scales, mean))
    write_catalog_dir(bundle / "catalog", data, fsync=False)
    del data, items

    def edit(man: dict) -> dict:
        man["catalog"].update(count=n, mean=[float(x) for x in mean])
        return man

    resign_bundle(bundle, root / "keys" / "publisher.key", edit=edit)
    print(f"built {n:,} items in {time.perf_counter() - t0:.0f} s: {bundle}", file=sys.stderr)
    return bundle


def evict(bundle: Path) -> None:
    """Drop the catalog's files from the page cache (POSIX_FADV_DONTNEED on these files only), as
    on a device whose page cache no longer holds them: only the pages a query reads come in."""
    for f in (bundle / "catalog").iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(bundle: Path, scan: str) -> dict:
    """In this process: open, record, recommend; the memory figures in MiB. ``scan``: exact,
    two_pass (the files in the page cache), two_pass_cold (evicted first)."""
    import logging

    logging.disable(logging.WARNING)  # the unpinned-key warning
    base = _status()
    from shelfrank.device import Recommender
    from shelfrank.device import bundle as bfmt
    from shelfrank.device.planner import Planner

    imported = _status()
    state = WORK / f"state-{os.getpid()}"
    shutil.rmtree(state, ignore_errors=True)
    t0 = time.perf_counter()
    planner = Planner({"exact": "exact", "two_pass": "binary", "two_pass_cold": "binary"}[scan])
    rec = Recommender(bundle, bfmt.verify_bundle(bundle), state, None, planner=planner)
    open_s = time.perf_counter() - t0
    if scan.endswith("_cold"):  # after open: its signature check has just read every file
        evict(bundle)
    opened = _status()
    rng = np.random.default_rng(7)
    n = len(rec.catalog)
    users = [f"u{i}" for i in range(USERS)]
    for u in users:
        for row in rng.integers(0, n, EVENTS).tolist():
            rec.record(u, rec.catalog.item_ids[row], "view")
    times, first = [], None
    for i in range(CALLS):
        before = _status() if i == 0 else None
        t = time.perf_counter()
        rec.recommend(users[i % USERS], k=10, ranker="tower")
        times.append(time.perf_counter() - t)
        if before is not None:  # what one query brings in (the first one also maps the codes)
            after = _status()
            first = {k: (after[k] - before[k]) / 1024.0 for k in ("RssAnon", "RssFile")}
    end = _status()
    rec.close()
    shutil.rmtree(state, ignore_errors=True)
    mib = 1024.0
    return {
        "n": n,
        "scan": scan,
        "ran": dict(planner.counts),
        "peak_rss_mib": end["VmHWM"] / mib,
        "rss_anon_mib": end["RssAnon"] / mib,
        "rss_file_mib": end["RssFile"] / mib,
        "after_open": {"rss_anon_mib": opened["RssAnon"] / mib, "rss_file_mib": opened["RssFile"] / mib},
        "after_import": {"rss_anon_mib": imported["RssAnon"] / mib, "rss_file_mib": imported["RssFile"] / mib},
        "python_start_rss_mib": base["VmRSS"] / mib,
        "first_query_mib": first,
        "open_s": open_s,
        "recommend_ms_p50": float(np.median(times[5:])) * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--real-embeddings", help="an (M, d) float .npy instead of the Games titles' embeddings")
    ap.add_argument("--json", action="store_true", help="print only the JSON")
    ap.add_argument("--measure", nargs=2, metavar=("BUNDLE", "SCAN"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.measure:
        print(json.dumps(measure(Path(a.measure[0]), a.measure[1])))
        return 0
    from shelfrank.bench.kernel_data import load_real_embeddings, read_titles

    emb, info = load_real_embeddings(a.real_embeddings, lambda s: print(s, file=sys.stderr))
    if emb is None:
        print(f"error: no real embeddings: {info.get('reason')}", file=sys.stderr)
        return 1
    titles_path = info.get("titles")
    titles = read_titles(Path(titles_path)) if titles_path else [f"Item {i}" for i in range(len(emb))]
    results = []
    for n in (int(s) for s in a.sizes.split(",")):
        bundle = build(n, np.ascontiguousarray(emb, np.float32), titles)
        for scan in ("exact", "two_pass", "two_pass_cold"):
            out = subprocess.run(
                [sys.executable, __file__, "--measure", str(bundle), scan], capture_output=True, text=True, check=True
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    doc = {
        "source": info.get("source"),
        "noise": NOISE,
        "users": USERS,
        "events": EVENTS,
        "calls": CALLS,
        "runs": results,
    }
    if not a.json:
        print(f"{'n':>9} {'scan':>8} {'peak RSS':>9} {'anon':>7} {'file':>7} {'open s':>7} {'p50 ms':>7}")
        for r in results:
            print(
                f"{r['n']:>9,} {r['scan']:>8} {r['peak_rss_mib']:>8.0f}M {r['rss_anon_mib']:>6.0f}M "
                f"{r['rss_file_mib']:>6.0f}M {r['open_s']:>7.1f} {r['recommend_ms_p50']:>7.2f}"
            )
    print(json.dumps(doc, indent=None if a.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
