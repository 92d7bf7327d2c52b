"""What merchandising rules and live stock updates cost a device (docs/device.md, "Merchandising rules").

    python scripts/bench_rules.py [--sizes 10000,100000] [--calls 200] [--stock 1000]

For each catalog size (the tiny test bundle's catalog expanded, dim ``--dim``, 50 neighbours per
item, the default ``RankerParams``; one shopper with 20 events): the hybrid ``recommend(k=10)``
without rules and with a typical document (a deny filter, four filter boosts, a bury by ids,
``category_caps {"*": 3}``, an id pin and a filter pin), interleaved call by call, p50/p95 (the
user-vector cache warm: a repeat visit); the compile (the first call after ``set_rules``, once per
catalog object); ``update_stock`` of ``--stock`` items (one SQLite transaction and the swap) and the
first call after it (the rules compile again: a stock change can change what a filter selects).
Medians after a warm-up; one variable per table (the catalog size). Not a test.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch import system_info  # one system-info block for the device scripts


def rules_for(rec) -> dict:
    cat = rec.catalog
    names = cat.categories
    return {
        "format_version": 1,
        "deny": {"where": {"category": names[0], "max_price": 20.0}},
        "boost": [{"where": {"category": c}, "positions": 3} for c in names[1:5]],
        "bury": [{"ids": [cat.item_ids[i] for i in range(0, 200, 2)]}],
        "category_caps": {"*": 3},
        "pin": [
            {"item_id": cat.item_ids[len(cat) - 1], "position": 2},
            {"where": {"category": names[5]}, "position": 5},
        ],
    }


def ms(f, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--stock", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=384)
    a = ap.parse_args(argv)

    from shelfrank.bench.expand import expand_catalog
    from shelfrank.device import Recommender
    from shelfrank.device.catalog_files import read_catalog_dir, write_catalog_dir
    from shelfrank.device.ranker import RankerParams
    from shelfrank.device.text import ACTIONS
    from shelfrank.testing import build_device_bundle

    s = system_info(1)
    print(f"CPU {s['cpu']} ({s['cpus']} CPUs), ISA {s['isa']}, 1 thread, commit {s['commit']}, dim {a.dim}, k = 10\n")
    print(
        "| items | p50 ms no rules | p50 ms rules | p95 ms no rules | p95 ms rules | compile ms | "
        f"update_stock({a.stock}) ms | next call ms |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        bundle, pub = build_device_bundle(
            t / "b", dim=a.dim, max_events=20, neighbors=50, ranker=RankerParams().to_manifest()
        )
        base = read_catalog_dir(bundle / "catalog")
        with Recommender.open(bundle, public_key=pub, state_dir=t / "state") as rec:
            for n in (int(x) for x in a.sizes.split(",")):
                write_catalog_dir(t / f"cat-{n}", expand_catalog(base, n), fsync=False)
                rec._swap_catalog(t / f"cat-{n}", 10**6 + n)
                ids = rec.catalog.item_ids
                u = f"u{n}"
                for j, r in enumerate(rng.choice(n, 20, replace=False)):
                    rec.record(u, ids[int(r)], ACTIONS[j % 4])
                call = functools.partial(rec.recommend, u, k=10)
                for _ in range(10):  # warm-up
                    call()
                doc = rec.set_rules(rules_for(rec))  # checked and compiled against this catalog
                rec.merch._compiled = None  # what a new catalog object (a sync, a stock update) costs
                compile_ms = ms(call, 1)[0]
                plain, ruled = [], []
                for _ in range(a.calls):  # interleaved: the same load on both
                    rec.merch.local = None
                    plain += ms(call, 1)
                    rec.merch.local = doc
                    ruled += ms(call, 1)
                upd = {
                    ids[int(i)]: {"in_stock": bool(i % 2), "price": float(i % 97)}
                    for i in rng.choice(n, a.stock, replace=False)
                }
                stock_ms = float(np.median(ms(functools.partial(rec.update_stock, upd), 5)))
                next_ms = ms(call, 1)[0]
                p = lambda v, q: float(np.percentile(v, q))  # noqa: E731
                print(
                    f"| {n:,} | {p(plain, 50):.2f} | {p(ruled, 50):.2f} | {p(plain, 95):.2f} | {p(ruled, 95):.2f} | "
                    f"{compile_ms:.1f} | {stock_ms:.1f} | {next_ms:.1f} |"
                )
                rec.set_rules(None)
                rec._swap_catalog(bundle / "catalog", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
