"""Small real artefacts for tests and examples, built locally (nothing is downloaded).

- :func:`build_wordpiece`: a BERT-style WordPiece ``tokenizer.json`` from a list of texts.
- :func:`build_tiny_encoder` / :func:`build_tiny_tower`: ONNX graphs with the bundle's exact
  interfaces, made with ``onnx.helper`` (no torch): a mean-pooled embedding-table encoder (also
  as an fp16 graph with float32 output, like the export's ``--fp16`` encoder) and a
  recency/action-weighted mean user tower.
- :func:`build_device_bundle`: a small signed bundle of the demo shop with them, optionally with a
  co-occurrence neighbour table (:func:`cooccurrence_neighbors`) and a hybrid ``ranker`` entry.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_wordpiece(texts: list[str], path: str | Path) -> dict[str, int]:
    """Write ``path/tokenizer.json``: lower-cased whole words of ``texts`` plus ``##char`` pieces."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    chars = sorted({c for w in words for c in w})
    vocab = {tok: i for i, tok in enumerate(SPECIAL + words + [f"##{c}" for c in chars])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return vocab


def _normalize_nodes(helper, src: str, dst: str, axis: int, *, dtype: int = 1) -> list:
    eps = helper.make_tensor("eps_" + dst, dtype, [], [1e-7 if dtype == 10 else 1e-9])
    return [
        helper.make_node("ReduceL2", [src], [dst + "_n"], axes=[axis], keepdims=1),
        helper.make_node("Constant", [], [dst + "_eps"], value=eps),
        helper.make_node("Max", [dst + "_n", dst + "_eps"], [dst + "_nc"]),
        helper.make_node("Div", [src, dst + "_nc"], [dst]),
    ]


def _save(path: str | Path, name: str, nodes: list, inputs: list, output, weights: dict[str, np.ndarray]) -> Path:
    """Check and write an opset-17 model; ``ax1``/``ax2`` (axis constants) are always provided."""
    import onnx
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    inits += [numpy_helper.from_array(np.array([a], np.int64), f"ax{a}") for a in (1, 2)]
    graph = helper.make_graph(nodes, name, inputs, [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def build_tiny_encoder(path: str | Path, vocab_size: int, dim: int, *, seed: int = 0, fp16: bool = False) -> Path:
    """ONNX (input_ids, attention_mask) → embedding: masked mean of a random embedding table, L2-normalised.

    ``fp16``: the same table rounded to float16 and the graph computed in float16, with a final
    Cast so the output stays float32 (the interface of the export's ``--fp16`` encoder).
    """
    from onnx import TensorProto, helper

    w = np.random.default_rng(seed).standard_normal((vocab_size, dim)).astype(np.float16 if fp16 else np.float32)
    ft = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    one = helper.make_tensor("one", ft, [], [1e-7 if fp16 else 1e-9])
    out = "emb16" if fp16 else "embedding"
    nodes = [
        helper.make_node("Gather", ["W", "input_ids"], ["E"]),
        helper.make_node("Cast", ["attention_mask"], ["mf"], to=ft),
        helper.make_node("Unsqueeze", ["mf", "ax2"], ["m3"]),
        helper.make_node("Mul", ["E", "m3"], ["Em"]),
        helper.make_node("ReduceSum", ["Em", "ax1"], ["S"], keepdims=0),
        helper.make_node("ReduceSum", ["m3", "ax1"], ["C"], keepdims=0),
        helper.make_node("Constant", [], ["tiny"], value=one),
        helper.make_node("Max", ["C", "tiny"], ["Cc"]),
        helper.make_node("Div", ["S", "Cc"], ["P"]),
        *_normalize_nodes(helper, "P", out, 1, dtype=ft),
    ]
    if fp16:
        nodes.append(helper.make_node("Cast", ["emb16"], ["embedding"], to=TensorProto.FLOAT))
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
    ]
    output = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])
    return _save(path, "tiny_encoder", nodes, inputs, output, {"W": w})


def build_tiny_tower(path: str | Path, dim: int, max_events: int, *, decay: float = 0.8) -> Path:
    """ONNX user tower: Σ_t mask_t · w(action_t) · decay^t · item_vec_t, L2-normalised."""
    from onnx import TensorProto, helper

    action_w = np.array([1.0, 1.5, 2.0, 3.0], np.float32)
    pos_w = (decay ** np.arange(max_events)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["aw", "actions"], ["A"]),
        helper.make_node("Mul", ["A", "mask"], ["w1"]),
        helper.make_node("Mul", ["w1", "pw"], ["w2"]),
        helper.make_node("Unsqueeze", ["w2", "ax2"], ["w3"]),
        helper.make_node("Mul", ["item_vecs", "w3"], ["X"]),
        helper.make_node("ReduceSum", ["X", "ax1"], ["S"], keepdims=0),
        *_normalize_nodes(helper, "S", "user", 1),
    ]
    inputs = [
        helper.make_tensor_value_info("item_vecs", TensorProto.FLOAT, ["batch", max_events, dim]),
        helper.make_tensor_value_info("actions", TensorProto.INT64, ["batch", max_events]),
        helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", max_events]),
    ]
    output = helper.make_tensor_value_info("user", TensorProto.FLOAT, ["batch", dim])
    return _save(path, "tiny_tower", nodes, inputs, output, {"aw": action_w, "pw": pos_w})


def cooccurrence_neighbors(seqs: list[list[tuple[int, int]]], n: int, m: int, *, window: int = 3):
    """A neighbour table as the bundle stores it, from step sequences (no scipy): item i's ``m``
    strongest co-occurring items, where two steps ``g`` ≤ ``window`` apart add ``1/g`` to both.

    Returns (ids int32 (n, m), -1 padded; weights float16 (n, m), scaled so the largest is 1, 0
    where padded). Strongest first, ties to the lower id; an item never seen with another has none.
    """
    co = np.zeros((n, n), np.float64)
    for seq in seqs:
        rows = [r for r, _ in seq]
        for a in range(len(rows)):
            for g in range(1, window + 1):
                if a + g < len(rows) and rows[a] != rows[a + g]:
                    co[rows[a], rows[a + g]] += 1.0 / g
                    co[rows[a + g], rows[a]] += 1.0 / g
    ids = np.full((n, m), -1, np.int32)
    w = np.zeros((n, m), np.float16)
    top = co.max() if co.size and co.max() > 0 else 1.0
    for i in range(n):
        nz = np.flatnonzero(co[i] > 0)
        best = nz[np.lexsort((nz, -co[i, nz]))][:m]
        ids[i, : len(best)] = best
        w[i, : len(best)] = (co[i, best] / top).astype(np.float16)
    w[ids < 0] = 0
    ids[w == 0] = -1  # a weight that rounds to 0 in float16 is no neighbour (as the export writes it)
    return ids, w


def add_neighbors(bundle: str | Path, ids: np.ndarray, weights: np.ndarray, key_path: str | Path) -> dict:
    """Write a neighbour table into the bundle's catalog (``nbr.i32.npy`` / ``nbr.f16.npy``, declared
    as the catalog's ``nbr_ids`` / ``nbr_weights`` roles) and sign the bundle again; returns the manifest.

    The arrays are written as given (a test may pass a damaged table: the runtime, not this, checks them).
    """
    from shelfrank.device.catalog_files import NEIGHBOR_FILES

    bundle = Path(bundle)
    np.save(bundle / "catalog" / NEIGHBOR_FILES["nbr_ids"], ids)
    np.save(bundle / "catalog" / NEIGHBOR_FILES["nbr_weights"], weights)
    return resign_bundle(bundle, key_path)


def resign_bundle(bundle: str | Path, key_path: str | Path, edit=None) -> dict:
    """Sign the bundle again after its files changed: the catalog's roles follow the files there (a
    neighbour file removed leaves ``catalog.files``), every sub-hash is recomputed, ``edit`` (a
    function of the manifest dict, returning it) runs last. Returns the signed manifest."""
    from shelfrank.device import bundle as bfmt
    from shelfrank.device.catalog_files import CODE_FILES, FILES, NEIGHBOR_FILES, TEXT_FILES

    bundle = Path(bundle)
    manifest = json.loads((bundle / bfmt.MANIFEST).read_text())
    cat = manifest["catalog"]
    files = {role: f"catalog/{name}" for role, name in {**FILES, **NEIGHBOR_FILES, **CODE_FILES, **TEXT_FILES}.items()}
    cat["files"] = {role: rel for role, rel in files.items() if (bundle / rel).is_file()}
    cat["sha256"] = {role: bfmt.sha256_file(bundle / rel) for role, rel in cat["files"].items()}
    for entry in ("model", "tokenizer", "user_tower"):
        manifest[entry]["sha256"] = bfmt.sha256_file(bundle / manifest[entry]["file"])
    if edit is not None:
        manifest = edit(manifest)
    manifest.pop("files", None)
    return bfmt.sign_bundle(bundle, manifest, bfmt.load_private_key(key_path))


def tiny_ranker(**overrides) -> dict:
    """The ``ranker`` manifest entry of the tiny hybrid bundle: every term weighted (repeat too), few
    candidates and a short ``recent`` window, so that a test sees each part of the fused score."""
    from dataclasses import replace

    from shelfrank.device.ranker import RankerParams

    base = RankerParams(
        w_tower=1.0,
        w_cooc=0.6,
        w_pop=0.15,
        w_repeat=0.4,
        candidates=20,
        recent=5,
        decay=0.7,
        action_weights=(0.5, 1.0, 2.0, 3.0),
    )
    return replace(base, **overrides).to_manifest()


def publisher_key(bundle: str | Path) -> Path:
    """The private key :func:`build_device_bundle` signed ``bundle`` with (its public half beside it, ``.pub``)."""
    return Path(bundle).parent / "keys" / "publisher.key"


def build_device_bundle(
    root: Path,
    *,
    n_items: int = 300,
    seed: int = 5,
    dim: int = 16,
    max_events: int = 6,
    fp16: bool = False,
    neighbors: int = 0,
    ranker: dict | None = None,
) -> tuple[Path, Path]:
    """A small signed bundle of the demo shop with the tiny ONNX encoder and tower (no torch).

    ``fp16`` adds the tiny encoder's float16 twin as the bundle's ``encoders.fp16`` (what
    ``shelfrank export --fp16`` writes). ``neighbors`` = M > 0 adds a co-occurrence neighbour
    table of M neighbours per item built from the demo shop's sequences
    (:func:`cooccurrence_neighbors`); ``ranker`` is the manifest's ``ranker`` entry
    (``RankerParams(...).to_manifest()``). Returns (bundle folder, publisher public key); the
    private key is ``root/keys/publisher.key``.
    """
    from shelfrank.device import bundle as bfmt
    from shelfrank.device.encoder import TextEncoder
    from shelfrank.device.kernel import quantize_rows
    from shelfrank.device.text import item_text
    from shelfrank.export.bundle_writer import write_bundle
    from shelfrank.export.demo_shop import make_demo_shop
    from shelfrank.export.evaluate import popularity_scores

    ds = make_demo_shop(n_items=n_items, n_users=60, seed=seed)
    texts = [item_text(ds.catalog.record(i)) for i in range(len(ds.catalog))]
    work = root / "work"
    vocab = build_wordpiece(texts, work)
    build_tiny_encoder(work / "encoder.onnx", len(vocab), dim, seed=seed)
    build_tiny_tower(work / "tower.onnx", dim, max_events)
    rows = TextEncoder(work / "encoder.onnx", work / "tokenizer.json", max_len=32).encode(texts)
    rows8, scales = quantize_rows(rows)
    key, pub = bfmt.generate_keypair(publisher_key(root / "bundle"))
    encoders = {}
    if fp16:
        build_tiny_encoder(work / "encoder_fp16.onnx", len(vocab), dim, seed=seed, fp16=True)
        encoders["fp16"] = (work / "encoder_fp16.onnx", {"precision": "fp16", "io": "float32"})
    write_bundle(
        root / "bundle",
        ds,
        encoder=work / "encoder.onnx",
        tokenizer=work / "tokenizer.json",
        tower=work / "tower.onnx",
        rows8=rows8,
        scales=scales,
        popularity=popularity_scores(ds, len(texts)),
        key=bfmt.load_private_key(key),
        max_len=32,
        max_events=max_events,
        model={"layers": 0, "precision": "fp32"},
        encoders=encoders,
        meta={} if ranker is None else {"ranker": ranker},
    )
    if neighbors:
        ids, w = cooccurrence_neighbors(ds.sequences(), len(texts), neighbors)
        add_neighbors(root / "bundle", ids, w, key)
    return root / "bundle", pub


def write_cpu_as_gpu_board(path: str | Path, *, gpu_providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> Path:
    """A board config whose ``gpu_providers`` are the given ones (default: the CPU provider), so a
    machine without a GPU exercises the path that runs the bundle's fp16 encoder."""
    lines = [
        'name = "cpu-as-gpu"',
        'description = "test board: the fp16 encoder under the given providers"',
        'cpu = "any"',
        'expected_isa = "scalar"',
        "threads = 1",
        'providers = ["CPUExecutionProvider"]',
        f"gpu_providers = {json.dumps(list(gpu_providers))}",  # a JSON list of strings is a TOML array
        'precision = "int8"',
        "max_catalog_items = 100000",
        "memory_budget_mb = 256",
        'install_prefix = "/opt/shelfrank"',
        'service_user = "shelfrank"',
        'python = "python3"',
    ]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def publish_records(bundle: str | Path, out: str | Path, records: list[dict], key_path: str | Path) -> None:
    """``shelfrank publish`` a catalog of item records (dicts with item_id, title, category, brand,
    price or None, in_stock) for ``bundle`` into ``out``, signed with the private key at ``key_path``."""
    from shelfrank.device import bundle as bfmt
    from shelfrank.export.data import Catalog
    from shelfrank.export.publish import publish

    cat = Catalog(
        [r["item_id"] for r in records],
        [r["title"] for r in records],
        [r["category"] for r in records],
        [r["brand"] for r in records],
        np.array([np.nan if r["price"] is None else r["price"] for r in records]),
        np.array([r["in_stock"] for r in records], bool),
    )
    publish(bundle, out, cat, key=bfmt.load_private_key(key_path))


def sign_manifest_as_is(root: str | Path, manifest: dict, key_path: str | Path) -> None:
    """Sign ``manifest`` for the bundle at ``root`` exactly as given, with the private key at
    ``key_path``: what a hostile publisher (or a self-signed bundle on a first flash) can produce.
    Unlike ``bundle.sign_bundle`` it keeps the ``files`` table as it is, apart from the hash of the
    ``publisher.pub`` it writes (when listed) and ``publisher_key_id``."""
    from shelfrank.device import bundle as bfmt

    root = Path(root)
    key = bfmt.load_private_key(key_path)
    (root / bfmt.PUBLIC_KEY).write_bytes(bfmt.public_pem(key.public_key()))
    manifest = dict(manifest, publisher_key_id=bfmt.key_id(key.public_key()))
    if isinstance(manifest.get("files"), dict) and bfmt.PUBLIC_KEY in manifest["files"]:
        manifest["files"] = {**manifest["files"], bfmt.PUBLIC_KEY: bfmt.sha256_file(root / bfmt.PUBLIC_KEY)}
    data = bfmt.canonical_json(manifest)
    (root / bfmt.MANIFEST).write_bytes(data)
    (root / bfmt.SIGNATURE).write_bytes(key.sign(data))
