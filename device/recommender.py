"""The on-device API: ``Recommender.open(bundle)`` then record / recommend / similar / search.

Everything a query needs is in memory or memory-mapped after ``open``; a query is the user tower
(a small ONNX model over the stored rows of the shopper's recent items: no text encoder call)
plus one native int8 top-k scan of the catalog. The text encoder is loaded on the first
``search`` so that opening stays fast.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shelfrank.device import bundle as bfmt
from shelfrank.device.catalog import Catalog, Item
from shelfrank.device.encoder import TextEncoder, make_session, open_text_encoder, provider_names
from shelfrank.device.events import Event, EventStore
from shelfrank.device.history import collapse, tower_inputs
from shelfrank.device.kernel import topk
from shelfrank.device.ranker import RankerParams, cooc_scores, fuse, mmr, order, pop_feature, step_weights
from shelfrank.device.text import ACTION_IDS
from shelfrank.errors import BundleError, InputError

logger = logging.getLogger(__name__)


def _state_dir_for(bundle: Path, explicit: str | Path | None) -> Path:
    """``PREFIX/state`` for a flashed layout, else $SHELFRANK_STATE, else a per-bundle user folder."""
    if explicit is not None:
        return Path(explicit)
    parent = bundle.parent
    if bundle.name in ("current", "slot_a", "slot_b") and (
        (parent / "slot_a").exists() or (parent / "slot_b").exists()
    ):
        return parent / "state"
    if os.environ.get("SHELFRANK_STATE"):
        return Path(os.environ["SHELFRANK_STATE"])
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    real = bundle.resolve()
    return base / "shelfrank" / f"{real.name}-{hashlib.sha256(str(real).encode()).hexdigest()[:12]}"


class Recommender:
    """Open with :meth:`open`; safe to share between threads."""

    def __init__(
        self,
        bundle: Path,
        manifest: bfmt.Manifest,
        state_dir: Path,
        public_key: Any,
        *,
        threads: int = 1,
        providers: list | None = None,
        max_history: int = 200,
        gpu_providers: list | None = None,
    ) -> None:
        self.bundle, self.manifest, self.state_dir = bundle, manifest, state_dir
        self.public_key = public_key  # the publisher key the bundle verified with; catalog indexes too
        self.threads, self.providers = threads, providers
        self.gpu_providers = gpu_providers  # the board's: the text encoder's fp16 path (open_text_encoder)
        self._encoder_info: dict[str, Any] | None = None
        # loading the encoder may take minutes (a TensorRT engine build): never under self._lock,
        # which recommend() takes
        self._encoder_lock = threading.Lock()
        self.dim = manifest.model.dim
        self.catalog = self._newest_catalog()
        tower = manifest.user_tower
        if tower.kind != "sequence":
            raise BundleError(
                f"{bundle / bfmt.MANIFEST}: user_tower kind {tower.kind!r} is not supported "
                "by this runtime (it runs 'sequence')"
            )
        self.max_events = tower.max_events
        # the hybrid ranker's parameters (None: a bundle without one ranks by the tower alone)
        self.ranker = None
        if manifest.ranker is not None:
            try:
                self.ranker = RankerParams.from_manifest(manifest.ranker)
            except BundleError as e:  # name the file: the entry alone does not say which bundle
                raise BundleError(f"{bundle / bfmt.MANIFEST}: {e}; re-export the bundle") from e
        self._tower = make_session(bundle / tower.file, threads=threads, providers=providers)
        self._encoder: TextEncoder | None = None
        self._lock = threading.Lock()
        self.events = EventStore(state_dir / "events.sqlite", max_history=max_history)
        # user id -> (events generation, catalog version, user vector, the collapsed steps it came from)
        self._cache: dict[str, tuple[int, int, np.ndarray | None, list[tuple[int, int]]]] = {}

    # ---- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        board: str | None = None,
        public_key: str | Path | bytes | None = None,
        state_dir: str | Path | None = None,
        threads: int | None = None,
    ) -> Recommender:
        """Verify and open a bundle directory (or a flashed ``PREFIX/current`` / slot).

        Trust: ``public_key``, else ``state/trusted.pub``, else the bundle's own key with an
        "unpinned" warning (development). Every file hash is checked.

        Raises:
            BundleError, SignatureError: the bundle is corrupt, unsigned, of an unknown format or
                signed by a key other than the trusted one.
        """
        bundle = Path(path)
        if not bundle.exists():
            raise BundleError(f"{bundle}: no such bundle")
        state = _state_dir_for(bundle, state_dir)
        key = public_key
        if key is None and (state / "trusted.pub").is_file():
            key = state / "trusted.pub"
        if key is None:
            logger.warning("%s: no trusted publisher key pinned; trusting the bundle's own key (unpinned)", bundle)
        trusted = bfmt.load_public_key(key if key is not None else bundle / bfmt.PUBLIC_KEY)
        manifest = bfmt.verify_bundle(bundle.resolve(), public_key=trusted)
        n_threads, providers, gpu_providers = 1, None, None
        if board is not None:
            n_threads, providers, gpu_providers = _board_settings(board)
        if threads is not None:
            n_threads = int(threads)
        return cls(
            bundle.resolve(),
            manifest,
            state,
            trusted,
            threads=n_threads,
            providers=providers,
            gpu_providers=gpu_providers,
        )

    # ---- the catalog ----------------------------------------------------------------------------

    def _synced_catalog(self, newer_than: int) -> Catalog | None:
        """The last catalog synced into the state folder, when it is newer than ``newer_than`` and
        made for this bundle's model; None otherwise (an unusable one is logged and skipped)."""
        from shelfrank.device.sync import CatalogStore

        synced = CatalogStore(self.state_dir).current()
        if synced is None:
            return None
        version, path, meta = synced
        if version <= newer_than or meta.get("model_sha256") != self.manifest["model"]["sha256"]:
            return None
        try:
            return Catalog(path, version=version, dim=self.dim)
        except BundleError as e:
            logger.warning("synced catalog %s unusable (%s); keeps serving version %d", path, e, newer_than)
            return None

    def _newest_catalog(self) -> Catalog:
        """The newer of the bundle's catalog and the last one synced into the state folder."""
        base_version = int(self.manifest["catalog"]["version"])
        synced = self._synced_catalog(base_version)
        return synced if synced is not None else Catalog(self.bundle / "catalog", version=base_version, dim=self.dim)

    def _swap_catalog(self, path: Path, version: int) -> None:
        new = Catalog(path, version=version, dim=self.dim)
        with self._lock:
            self.catalog = new  # one reference swap: a query already running keeps its catalog

    _synced_link: str | None = None  # the state folder's catalog/current target last looked at

    def refresh(self) -> bool:
        """Serve a newer catalog that another process (``shelfrank sync``) installed into the state folder.

        Cheap when nothing changed (one ``readlink``); safe to call from several threads. Returns
        True when it swapped the catalog in.
        """
        from shelfrank.device.sync import CatalogStore

        try:
            link = os.readlink(CatalogStore(self.state_dir).root / "current")
        except OSError:
            return False
        if link == self._synced_link:
            return False
        self._synced_link = link
        new = self._synced_catalog(self.catalog.version)
        if new is None:
            return False
        with self._lock:
            if new.version <= self.catalog.version:  # another thread got there first
                return False
            self.catalog = new
        logger.info("serving catalog version %d (installed by another process)", new.version)
        return True

    def sync(self, url_or_dir: str | Path):
        """Fetch and apply the publisher's newest catalog (``shelfrank.device.sync.sync``)."""
        from shelfrank.device.sync import sync

        return sync(self, url_or_dir)

    # ---- events ------------------------------------------------------------------------------

    def record(self, user_id: str, item_id: str, action: str, ts: float | None = None) -> None:
        """Persist one event (durable before this returns); the next call reflects it.

        Raises:
            InputError: empty user id or unknown action; UnknownItemError: the item is not in
            the catalog.
        """
        self.catalog.row(item_id)
        self.events.record(user_id, item_id, action, ts)

    def history(self, user_id: str) -> list[Event]:
        return list(self.events.history(user_id))  # a copy: the store's list is its cache

    def forget(self, user_id: str) -> None:
        try:
            self.events.forget(user_id)  # EventStoreBusyError: deleted, the WAL truncated later
        finally:
            with self._lock:
                self._cache.pop(user_id, None)

    # ---- queries -----------------------------------------------------------------------------

    def user_vector(
        self, user_id: str, cat: Catalog | None = None, events: tuple[int, list[Event]] | None = None
    ) -> np.ndarray | None:
        """The shopper's vector from their recent events (None with no usable history); cached until
        their next event. ``events`` = (generation, history) when the caller already read them."""
        return self._user_state(user_id, self.catalog if cat is None else cat, events)[0]

    def _user_state(
        self, user_id: str, cat: Catalog, events: tuple[int, list[Event]] | None
    ) -> tuple[np.ndarray | None, list[tuple[int, int]]]:
        """(:meth:`user_vector`, the collapsed (row, action) steps of the recent events it was made
        from), cached together: the hybrid ranker reads the same steps."""
        # the generation is read before the events, so a concurrent record can only make the
        # cached vector look stale (recomputed next time), never make a stale one look fresh
        gen, history = events if events is not None else (self.events.generation(user_id), None)
        with self._lock:
            hit = self._cache.get(user_id)
        if hit is not None and hit[0] == gen and hit[1] == cat.version:
            return hit[2], hit[3]
        recent = (
            history[-self.max_events * 4 :]
            if history is not None
            else self.events.history(user_id, limit=self.max_events * 4)
        )
        # items a sync removed are kept in the history but ignored
        steps = collapse((cat.index[e.item_id], ACTION_IDS[e.action]) for e in recent if e.item_id in cat.index)
        vec = None
        if steps:
            rows, acts, mask = tower_inputs([steps], self.max_events)
            feeds = {"item_vecs": cat.vectors(rows[0])[None], "actions": acts, "mask": mask}
            (u,) = self._tower.run(["user"], feeds)
            vec = np.ascontiguousarray(u[0], np.float32)
            if not np.isfinite(vec.sum()):  # one reduction: NaN or inf anywhere makes the sum non-finite
                raise BundleError(f"{self.bundle}: the user tower produced NaN/inf")
        with self._lock:
            self._cache[user_id] = (gen, cat.version, vec, steps)
        return vec, steps

    def _rank(
        self,
        cat: Catalog,
        query: np.ndarray | None,
        k: int,
        mask: np.ndarray | None,
        skip: frozenset[int] = frozenset(),
    ) -> list[Item]:
        """The k best rows for ``query`` among those ``mask`` allows, leaving out the rows in ``skip``.

        ``skip`` (a shopper's seen items) is applied by asking the kernel for k + len(skip) rows and
        dropping them: the same result as masking them (ties keep their row order) without building
        a catalog-sized mask on every call.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        if query is None:  # cold start: the bundle's popularity
            if skip:
                mask = np.ones(len(cat), bool) if mask is None else mask.copy()
                mask[list(skip)] = False
            pop = np.where(mask, cat.popularity, -np.inf) if mask is not None else cat.popularity
            order = np.lexsort((np.arange(len(cat)), -pop))[:k]
            keep = [int(r) for r in order if np.isfinite(pop[r])]
            return cat.items(keep, [float(pop[r]) for r in keep])
        want = min(k + len(skip), len(cat))
        ids, scores = topk(query, cat.rows, want, scales=cat.scales, mask=mask, threads=self.threads)
        rows, kept = [], []
        for r, s in zip(ids.tolist(), scores.tolist()):
            if r >= 0 and r not in skip:
                rows.append(r)
                kept.append(s)
                if len(rows) == k:
                    break
        return cat.items(rows, kept)

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        where: Mapping[str, Any] | None = None,
        diversity: float = 0.0,
        ranker: str = "hybrid",
    ) -> list[Item]:
        """Items for this shopper, best first; popular items when they have no history yet.

        ``ranker="hybrid"`` (the default when the bundle has a ranker) fuses the tower's candidates
        with the co-occurrence neighbours of the shopper's recent items (device/ranker.py);
        ``"tower"`` ranks by the user tower alone. ``diversity`` = λ in [0, 1] re-ranks the best
        candidates by maximal marginal relevance (0: the plain order).

        Raises:
            InputError: k not a positive integer, an unknown ranker, diversity outside [0, 1], a bad filter.
        """
        if ranker not in ("hybrid", "tower"):
            raise InputError(f"ranker must be 'hybrid' or 'tower', got {ranker!r}")
        if isinstance(diversity, bool) or not isinstance(diversity, (int, float)) or not 0.0 <= diversity <= 1.0:
            raise InputError(f"diversity must be a number in [0, 1], got {diversity!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        cat = self.catalog  # one consistent catalog for the whole call
        mask = cat.mask(where)
        gen = self.events.generation(user_id)
        events = self.events.history(user_id)  # read once: for the seen rows and the user vector
        index = cat.index
        seen = frozenset(index[e.item_id] for e in events if e.item_id in index) if exclude_seen else frozenset()
        u, steps = self._user_state(user_id, cat, (gen, events))
        pool = max(50, 5 * k) if diversity > 0 else k
        if u is None or self.ranker is None or ranker == "tower":
            out = self._rank(cat, u, pool, mask, seen)
            return self._diversify(cat, out, k, diversity) if diversity > 0 else out
        rows, scores = self._hybrid(cat, u, steps, pool, mask, seen, not exclude_seen)
        if diversity > 0 and len(rows) > 1:
            pick = mmr(rows, scores, cat.vectors(rows), k, float(diversity))
            rows, scores = rows[pick], scores[pick]
        return cat.items(rows[:k].tolist(), scores[:k].tolist())

    def _hybrid(
        self,
        cat: Catalog,
        u: np.ndarray,
        steps: list[tuple[int, int]],
        k: int,
        mask: np.ndarray | None,
        seen: frozenset[int],
        allow_seen: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best rows by the fused score (device/ranker.py) and their scores, best first: the
        candidates by the fused score, then (when they are fewer than k) the rest in tower order."""
        # Every step below works on a few hundred to a few thousand candidates, where numpy's
        # general-purpose set routines (hash-based np.unique, np.isin's pass per seen row) and a
        # full sort cost more than the arithmetic: sorted arrays, binary searches and a sort of
        # only the best instead. The result is the same, bit for bit.
        p = self.ranker
        h_rows, h_w = step_weights(steps, p)
        c_items, c_scores = cooc_scores(h_rows, h_w, cat.neighbor_ids, cat.neighbor_weights)
        seen_rows = np.sort(np.fromiter(seen, np.int64, len(seen)))
        if seen and len(c_items):  # seen items are no candidates and do not set the scale
            keep = ~_member(c_items, seen_rows)
            c_items, c_scores = c_items[keep], c_scores[keep]
        cmax = float(c_scores.max()) if len(c_scores) else 0.0
        # the tower's best `candidates` rows, then k more for the rest below the candidates
        want = min(p.candidates + k + len(seen), len(cat))
        ids, t_scores = topk(u, cat.rows, want, scales=cat.scales, mask=mask, threads=self.threads)
        ok = ids >= 0
        if seen:
            ok &= ~_member(ids, seen_rows)
        ids, t_scores = ids[ok].astype(np.int64), t_scores[ok]
        t_rows = ids[: p.candidates]
        if mask is not None and len(c_items):
            c_ok = mask[c_items]
            c_in, c_sc = c_items[c_ok], c_scores[c_ok]
        else:
            c_in, c_sc = c_items, c_scores
        parts = [t_rows, c_in]
        rep_rows = np.zeros(0, np.int64)
        if allow_seen and len(h_rows):  # the recent items are candidates (as in the export), repeat or not
            rep_rows = h_rows[h_w > 0]
            rep_rows = rep_rows if mask is None else rep_rows[mask[rep_rows]]
            parts.append(rep_rows)
        cand = np.concatenate(parts)
        if len(cand) == 0:
            return cand, np.zeros(0, np.float32)
        cand.sort()  # the union, ascending (as np.unique gives it)
        cand = cand[np.concatenate(([True], cand[1:] != cand[:-1]))]
        tower = cat.vectors(cand) @ u
        cooc = np.zeros(len(cand), np.float32)
        if len(c_in):
            cooc[np.searchsorted(cand, c_in)] = c_sc
        rep = 0.0
        if len(rep_rows):
            rep = np.zeros(len(cand), np.float32)
            inc = _member(h_rows, cand)
            np.add.at(rep, np.searchsorted(cand, h_rows[inc]), h_w[inc])
        fused = fuse(p, tower.astype(np.float32), cooc, cmax, pop_feature(cat.popularity[cand]), rep)
        o = _best(fused, cand, k)
        rows, scores = cand[o], fused[o]
        if len(rows) < k:  # the rest ranks below every candidate, in tower order (as hybrid_scores)
            rest = ~_member(ids, cand)
            more = k - len(rows)
            low = np.float32(fused.min() - 2.0)  # tower ≤ 1: below the lowest candidate
            rows = np.concatenate([rows, ids[rest][:more]])
            scores = np.concatenate([scores, (t_scores[rest][:more] + low).astype(np.float32)])
        return rows, scores

    def _diversify(self, cat: Catalog, items: list[Item], k: int, lam: float) -> list[Item]:
        if len(items) <= 1:
            return items[:k]
        rows = np.fromiter((cat.index[it.item_id] for it in items), np.int64, len(items))
        scores = np.fromiter((it.score for it in items), np.float32, len(items))
        return [items[i] for i in mmr(rows, scores, cat.vectors(rows), k, float(lam))]

    def similar(self, item_id: str, k: int = 10, *, where: Mapping[str, Any] | None = None) -> list[Item]:
        """Items closest to ``item_id`` (never the item itself)."""
        cat = self.catalog  # one consistent catalog for the whole call
        row = cat.row(item_id)
        return self._rank(cat, cat.vectors(np.array([row]))[0], k, cat.mask(where), frozenset((row,)))

    def search(
        self, text: str, k: int = 10, *, where: Mapping[str, Any] | None = None, mode: str = "hybrid"
    ) -> list[Item]:
        """Items matching a free-text query (device/search.py): ``mode="hybrid"`` fuses the catalog's
        FTS5 index (BM25, typo-corrected) with the encoder's dense scan (dense-only when the catalog
        has no usable FTS index); ``"dense"`` or ``"lexical"`` runs one of them alone.

        Raises:
            InputError: text not a string or only whitespace, k not a positive integer, an unknown
                mode or a bad filter.
        """
        from shelfrank.device import search as srch

        cat = self.catalog  # one consistent catalog for the whole call
        params = srch.SearchParams.from_manifest(self.manifest.search)
        enc = None if mode == "lexical" else self.encoder
        rows, scores = srch.search(cat, enc, text, k, where=where, mode=mode, params=params, threads=self.threads)
        return cat.items(rows.tolist(), scores.tolist())

    @property
    def encoder(self) -> TextEncoder:
        with self._encoder_lock:
            if self._encoder is None:
                self._encoder, self._encoder_info = open_text_encoder(
                    self.bundle,
                    self.manifest,
                    threads=self.threads,
                    providers=self.providers,
                    gpu_providers=self.gpu_providers,
                )
            return self._encoder

    @property
    def encoder_info(self) -> dict[str, Any]:
        """Which text encoder runs and on which providers (``open_text_encoder``'s record, with
        ``fallback_reason``); ``{"loaded": False, …}`` until the first ``search`` loads it."""
        info = self._encoder_info
        if info is None:
            return {"loaded": False, "gpu_providers": provider_names(self.gpu_providers or [])}
        return {"loaded": True, **info}

    def close(self) -> None:
        self.events.close()


def _member(a: np.ndarray, sorted_b: np.ndarray) -> np.ndarray:
    """``np.isin(a, sorted_b)`` for a sorted, non-empty ``sorted_b``: one binary search per element."""
    pos = np.minimum(np.searchsorted(sorted_b, a), len(sorted_b) - 1)
    return sorted_b[pos] == a


def _best(scores: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """``order(scores, rows)[:k]`` sorting only what can be among the k best: every entry scoring
    at least the k-th best score (ties included), then ordered by the same rule."""
    if k >= len(scores):
        return order(scores, rows)
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]
    if not np.isfinite(kth):  # NaN sorts last in both; leave such an input to the full order
        return order(scores, rows)[:k]
    sel = np.flatnonzero(scores >= kth)
    return sel[order(scores[sel], rows[sel])][:k]


def _board_settings(board: str) -> tuple[int, list | None, list | None]:
    from shelfrank.device.boards import load_board

    cfg = load_board(board)
    return cfg.threads, cfg.ort_providers(), cfg.gpu_ort_providers()
