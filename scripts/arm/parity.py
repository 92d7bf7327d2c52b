"""x86 <-> aarch64 end-to-end parity (docs: /work/shared/DESIGN.md "Real parts in tests").

Run by scripts/arm_runtime.sh, once with the x86 python and once per emulated aarch64 CPU:

    parity.py dump BUNDLE PUB STATE_DIR OUT.json     open the bundle, record fixed events, dump results
    parity.py compare OUT.json REF.json OTHER.json...  compare every OTHER with REF (x86); exit 1 on mismatch

What is compared (the same bundle, the same recorded events, the same inputs on every side):
  kernel     int8 top-10 ids and float32 score bits of the native kernel for fixed query vectors
             (single, batched and 2-thread calls) over the bundle's catalog and a synthetic 2000x384
             int8 catalog, and the two-pass search over both (sign codes, first-pass ids and
             Hamming distances, rescored ids and score bits): must be bit-exact.
  similar    Recommender.similar() top-10 ids + score bits: the query is a dequantised catalog row
             (no ONNX involved), so this is the kernel again, end to end: bit-exact.
  encoder    the bundle encoder's embeddings of fixed texts: cosine >= 0.999 per text.
  recommend  Recommender.recommend() top-10 ids per user (5 with history, 1 cold start) and
  search     Recommender.search() top-10 ids per query: the same ids at every position, except
             swaps between items whose x86 scores differ by < 2e-3 (x86 top-20 gives the scores).
Only the standard library, numpy and shelfrank are used, so the emulated python can run it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np

COS_MIN = 0.999
SWAP_EPS = 2e-3
K = 10
K_REF = 20  # the x86 side keeps this many, so a swapped-in item's x86 score is known

TEXTS = [
    "wireless controller",
    "espresso grinder with burrs",
    "trail tent for two",
    "noise cancelling headphones",
    "kids racing game",
    "stainless steel water bottle",
    "gaming keyboard rgb",
    "running shoes size 42",
    "4k monitor 27 inch",
    "coffee beans dark roast",
    "camping stove",
    "usb-c charging cable",
    "puzzle adventure game for switch",
    "ergonomic office chair",
    "bluetooth speaker waterproof",
    "yoga mat",
    "mechanical pencil set",
    "portable ssd 1tb",
    "Aurora Quantum",
    "Nimbus Kestrel Pro",
]
SEARCHES = TEXTS[:6]
USERS = {  # user -> list of (item row, action); rows are taken modulo the catalog size
    "alice": [(3, "view"), (17, "view"), (17, "cart"), (42, "purchase")],
    "bob": [(5, "view"), (6, "view"), (7, "view"), (8, "cart"), (9, "view"), (10, "view"), (11, "purchase")],
    "carol": [(100, "view")],
    "dave": [(250, "cart"), (251, "view"), (2, "view"), (250, "purchase")],
    "erin": [(77, "view"), (78, "view"), (79, "view"), (80, "view"), (81, "view"), (82, "view"), (83, "view")],
}
COLD_USER = "frank"
T0 = 1_700_000_000.0


def _queries(n: int, d: int, seed: int) -> np.ndarray:
    """Exactly representable float32 queries (integers / 64): the same bits on every machine."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-127, 128, size=(n, d)).astype(np.float32) / np.float32(64)).astype(np.float32)


def _bits(scores: np.ndarray) -> list:
    return np.asarray(scores, np.float32).view(np.uint32).tolist()


def _kernel_case(topk, q, rows, scales, threads=1):
    ids, scores = topk(q, rows, K, scales=scales, threads=threads)
    return {"ids": np.asarray(ids).tolist(), "bits": _bits(scores)}


def dump(bundle: str, pub: str, state: str, out: str) -> None:
    import shelfrank.device as sd
    from shelfrank.device import Recommender
    from shelfrank.device import kernel as kn

    rec = Recommender.open(bundle, public_key=pub or None, state_dir=state)
    try:
        cat = rec.catalog
        n, d = len(cat), rec.dim
        for u, evs in USERS.items():
            for j, (row, action) in enumerate(evs):
                rec.record(u, cat.item_ids[row % n], action, ts=T0 + 60.0 * j)

        res: dict = {
            "machine": platform.machine(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "isa": sd.active_isa(),
            "capabilities": sd.capabilities(),
            "catalog": {"items": n, "dim": d, "version": cat.version},
        }
        try:
            import onnxruntime

            res["onnxruntime"] = onnxruntime.__version__
        except Exception as e:  # pragma: no cover - reported, not fatal
            res["onnxruntime"] = repr(e)

        # the kernel, bit for bit: the bundle's int8 catalog and a synthetic bigger one
        rows, scales = np.ascontiguousarray(cat.rows), np.ascontiguousarray(cat.scales)
        qb = _queries(8, d, 1)
        rng = np.random.default_rng(7)
        syn_rows = rng.integers(-127, 128, size=(2000, 384)).astype(np.int8)
        syn_scales = (rng.integers(1, 1000, size=2000).astype(np.float32) / np.float32(65536)).astype(np.float32)
        qs = _queries(8, 384, 2)
        kern = {}
        for name, q, r, s in (("bundle", qb, rows, scales), ("synthetic", qs, syn_rows, syn_scales)):
            for i in range(len(q)):
                kern[f"{name}/single/{i}"] = _kernel_case(sd.topk, q[i], r, s)
            ids, scores = sd.topk(q, r, K, scales=s)
            kern[f"{name}/batch"] = {"ids": np.asarray(ids).tolist(), "bits": [_bits(x) for x in scores]}
            kern[f"{name}/threads2/0"] = _kernel_case(sd.topk, q[0], r, s, threads=2)
            # two-pass: the codes (bytes), the first pass (ids, distances) and the rescore (ids, score bits)
            # a mean made of exactly rounded steps (integer sum, one division, one float32 product),
            # so both machines code against the same bits
            mean = (r.astype(np.int64).sum(axis=0) / len(r)).astype(np.float32) * np.float32(np.max(s))
            codes = kn.binary_codes(r, scales=s, mean=mean)
            kern[f"{name}/two_pass/codes"] = {"sha": hashlib.sha256(codes.tobytes()).hexdigest()}
            fp_ids, fp_dist = kn.hamming_topk(q, codes, 50, mean=mean)
            kern[f"{name}/two_pass/first"] = {"ids": fp_ids.tolist(), "dist": fp_dist.tolist()}
            ids, scores = kn.topk_two_pass(q, r, K, codes=codes, mean=mean, r=50, scales=s)
            kern[f"{name}/two_pass/batch"] = {"ids": np.asarray(ids).tolist(), "bits": [_bits(x) for x in scores]}
        res["kernel"] = kern

        res["similar"] = {}
        for row in (0, 7, n // 2, n - 1):
            item = cat.item_ids[row]
            got = rec.similar(item, k=K)
            res["similar"][item] = {"ids": [x.item_id for x in got], "bits": _bits([x.score for x in got])}

        emb = rec.encoder.encode(TEXTS)
        res["encoder"] = {"texts": TEXTS, "emb": np.asarray(emb, np.float64).tolist()}

        res["recommend"] = {}
        for u in [*USERS, COLD_USER]:
            got = rec.recommend(u, k=K_REF)
            res["recommend"][u] = {"ids": [x.item_id for x in got], "scores": [float(x.score) for x in got]}
        res["search"] = {}
        for t in SEARCHES:
            got = rec.search(t, k=K_REF)
            res["search"][t] = {"ids": [x.item_id for x in got], "scores": [float(x.score) for x in got]}
    finally:
        rec.close()
    Path(out).write_text(json.dumps(res))
    print(f"parity dump: {res['machine']} isa={res['isa']} -> {out}")


def _ranked_ok(ref: dict, got: dict) -> tuple[bool, list[str]]:
    """Same top-K ids, except swaps between items whose ref (x86) scores differ by < SWAP_EPS."""
    score = dict(zip(ref["ids"], ref["scores"], strict=True))
    a, b = ref["ids"][:K], got["ids"][:K]
    notes = []
    if len(a) != len(b):
        return False, [f"{len(b)} results, x86 has {len(a)}"]
    ok = True
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x == y:
            continue
        if y not in score:
            ok = False
            notes.append(f"#{i}: {y} is not in the x86 top-{K_REF} (x86 has {x})")
            continue
        diff = abs(score[x] - score[y])
        if diff < SWAP_EPS:
            notes.append(f"#{i}: {x} <-> {y} swapped, x86 scores differ by {diff:.2e} (allowed)")
        else:
            ok = False
            notes.append(f"#{i}: {y} instead of {x}; x86 scores differ by {diff:.2e} >= {SWAP_EPS}")
    return ok, notes


def compare_one(ref: dict, got: dict) -> dict:
    out: dict = {"machine": got["machine"], "isa": got["isa"], "checks": {}, "ok": True}

    def put(name, ok, **info):
        out["checks"][name] = {"ok": bool(ok), **info}
        out["ok"] = out["ok"] and bool(ok)

    diff = [k for k in ref["kernel"] if ref["kernel"][k] != got["kernel"].get(k)]
    put("kernel_bit_exact", not diff, cases=len(ref["kernel"]), mismatched=diff)
    diff = [k for k in ref["similar"] if ref["similar"][k] != got["similar"].get(k)]
    put("similar_bit_exact", not diff, items=len(ref["similar"]), mismatched=diff)

    e1, e2 = np.array(ref["encoder"]["emb"]), np.array(got["encoder"]["emb"])
    if e1.shape != e2.shape:
        e2 = np.zeros_like(e1)  # fails the check below
    cos = (e1 * e2).sum(1) / np.maximum(np.linalg.norm(e1, axis=1) * np.linalg.norm(e2, axis=1), 1e-30)
    put(
        "encoder_cosine",
        e1.shape == e2.shape and cos.min() >= COS_MIN,
        texts=len(cos),
        min=float(cos.min()),
        max_abs_diff=float(np.abs(e1 - e2).max()),
        threshold=COS_MIN,
    )

    for what in ("recommend", "search"):
        detail, all_ok, exact = {}, True, 0
        for key, r in ref[what].items():
            ok, notes = _ranked_ok(r, got[what][key])
            all_ok &= ok
            exact += r["ids"][:K] == got[what][key]["ids"][:K]
            if notes:
                detail[key] = notes
        put(f"{what}_top{K}", all_ok, cases=len(ref[what]), identical=exact, notes=detail, swap_eps=SWAP_EPS)
    return out


def compare(out: str, ref_path: str, others: list[str]) -> int:
    ref = json.loads(Path(ref_path).read_text())
    report = {
        "definition": "DESIGN.md 'Real parts in tests': kernel bit-exact for the same query vectors; encoder "
        f"cosine >= {COS_MIN}; the same top-{K} ids except swaps between items whose x86 scores differ by "
        f"< {SWAP_EPS}",
        "reference": {k: ref[k] for k in ("machine", "isa", "python", "numpy", "onnxruntime", "catalog")},
        "users": [*USERS, COLD_USER],
        "texts": TEXTS,
        "searches": SEARCHES,
        "runs": {},
    }
    ok = True
    for p in others:
        got = json.loads(Path(p).read_text())
        name = Path(p).stem
        r = compare_one(ref, got)
        report["runs"][name] = r
        ok &= r["ok"]
        for c, v in r["checks"].items():
            extra = {
                k: v[k] for k in ("min", "identical", "cases", "items", "texts", "mismatched") if k in v and v[k] != []
            }
            print(f"  {name:<18} {c:<20} {'ok' if v['ok'] else 'MISMATCH'}  {extra}")
            for key, notes in v.get("notes", {}).items():
                for note in notes:
                    print(f"      {key}: {note}")
    report["ok"] = ok
    Path(out).write_text(json.dumps(report, indent=1))
    print(f"parity: {'ok' if ok else 'MISMATCH'} -> {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "dump":
        dump(*sys.argv[2:6])
    elif len(sys.argv) >= 5 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3], sys.argv[4:]))
    else:
        sys.exit(__doc__)
