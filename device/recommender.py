"""The on-device API: ``Recommender.open(bundle)`` then record / recommend / similar / search.

Everything a query needs is in memory or memory-mapped after ``open``; a query is the user tower
(a small ONNX model over the stored rows of the shopper's recent items: no text encoder call)
plus one native top-k scan of the catalog (exact int8, or two-pass over the catalog's binary codes:
the scan planner, device/planner.py). The text encoder is loaded on the first
``search`` so that opening stays fast.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from shelfrank.device import bundle as bfmt
from shelfrank.device.arguments import check_options as _check_options
from shelfrank.device.arguments import str_seq as _str_seq
from shelfrank.device.boards import runtime_settings as _board_settings
from shelfrank.device.catalog import POPULAR, Catalog, Item, Reason
from shelfrank.device.encoder import TextEncoder, make_session, open_text_encoder, provider_names
from shelfrank.device.events import Event, EventStore
from shelfrank.device.history import collapse, tower_feed
from shelfrank.device.hybrid import hybrid, reasons
from shelfrank.device.planner import Planner
from shelfrank.device.ranker import RankerParams, mmr, step_weights
from shelfrank.device.rules import Merchandising, RuleSet
from shelfrank.device.state import state_dir_for as _state_dir_for
from shelfrank.device.stock import StockResult, StockStore
from shelfrank.device.text import ACTION_IDS
from shelfrank.errors import BundleError, InputError

logger = logging.getLogger(__name__)

#: shoppers per batch top-k scan in :meth:`Recommender.recommend_many` (the kernel's sweet spot)
BATCH = 64


class Recommender:
    """Open with :meth:`open` (a context manager: ``with Recommender.open(b) as rec:``); safe to
    share between threads."""

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
        planner: Planner | None = None,
    ) -> None:
        self.bundle, self.manifest, self.state_dir = bundle, manifest, state_dir
        #: picks the exact or the two-pass scan and records which ran (device/planner.py; the board's
        #: ``first_pass`` and ``first_pass_r``)
        self.planner = planner if planner is not None else Planner()
        mean = manifest.catalog.mean  # the codes' centre (None: an older bundle, exact scans only)
        self.catalog_mean = None if mean is None else np.asarray(mean, np.float32)
        self.public_key = public_key  # the publisher key the bundle verified with; catalog indexes too
        self.threads, self.providers = threads, providers
        self.gpu_providers = gpu_providers  # the board's: the text encoder's fp16 path (open_text_encoder)
        self._encoder_info: dict[str, Any] | None = None
        # loading the encoder may take minutes (a TensorRT engine build): never under self._lock,
        # which recommend() takes
        self._encoder_lock = threading.Lock()
        self.dim = manifest.model.dim
        self.stock = StockStore(state_dir)  # live stock/price (device/stock.py), on every catalog opened
        self.merch = Merchandising(state_dir)  # the merchandising rules (device/rules.py)
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
        self._closed = False
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
        n_threads, providers, gpu_providers, planner = 1, None, None, None
        if board is not None:
            n_threads, providers, gpu_providers, planner = _board_settings(board)
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
            planner=planner,
        )

    # ---- the catalog ----------------------------------------------------------------------------

    def _synced_catalog(self, newer_than: int) -> Catalog | None:
        """The last catalog synced into the state folder, when newer than ``newer_than`` and usable."""
        from shelfrank.device.sync import synced_catalog

        return synced_catalog(self, newer_than)

    def _newest_catalog(self) -> Catalog:
        """The newer of the bundle's catalog and the last one synced into the state folder."""
        base_version = int(self.manifest["catalog"]["version"])
        synced = self._synced_catalog(base_version)
        return synced if synced is not None else self._open_catalog(self.bundle / "catalog", base_version)

    def _open_catalog(self, path: Path, version: int, *, codes: bool = True) -> Catalog:
        mean = self.catalog_mean if codes else None
        return self.stock.apply(Catalog(path, version=version, dim=self.dim, mean=mean, planner=self.planner))

    def _swap_catalog(self, path: Path, version: int) -> None:
        new = self._open_catalog(path, version)
        with self._lock:
            self.catalog = new  # one reference swap: a query already running keeps its catalog

    _synced_link: str | None = None  # the state folder's catalog/current target last looked at

    def refresh(self) -> bool:
        """Serve a newer catalog, rules or stock that another process (``shelfrank sync``) installed
        into the state folder.

        Cheap when nothing changed (one ``readlink``, a ``stat`` of the rules and stock files); safe
        to call from several threads. Returns True when something new serves.
        """
        swapped = self._refresh_catalog()
        swapped = self.stock.refresh(self) or swapped  # another process's stock updates
        return self.merch.refresh() or swapped

    def _refresh_catalog(self) -> bool:
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

    # ---- merchandising and live stock -----------------------------------------------------------

    def set_rules(self, doc: Mapping[str, Any] | None):
        """Set this device's own merchandising rules (a kiosk; ``formats.Rules`` as a dict), checked
        against the served catalog and kept in ``STATE/rules/local.json``; they win over the published
        rules until ``set_rules(None)``. The next call applies them (device/rules.py: the order).

        Raises:
            RulesError: the document breaks its format or names what the catalog lacks (the rules
                that were serving keep serving).
        """
        return self.merch.set_local(doc, self.catalog)

    def update_stock(self, updates: Mapping[str, Mapping[str, Any]], *, skip_unknown: bool = False) -> StockResult:
        """Live ``{item_id: {"in_stock": bool, "price": float | None}}`` for items of the served catalog,
        in one SQLite transaction (``STATE/stock.sqlite``), seen by the next call's ``where`` filters.

        Raises:
            StockError: not such a mapping, or over ``formats.MAX_STOCK_ITEMS`` entries.
            UnknownItemError: ids the catalog lacks; nothing is applied unless ``skip_unknown`` (counted).
        """
        return self.stock.update(self, updates, skip_unknown=skip_unknown)

    # ---- events ------------------------------------------------------------------------------

    def record(self, user_id: str, item_id: str, action: str, ts: float | None = None) -> None:
        """Persist one event (durable before this returns); the next call reflects it.

        Raises:
            InputError: empty user id or unknown action; UnknownItemError: the item is not in
            the catalog.
        """
        self.catalog.row(item_id)
        self.events.record(user_id, item_id, action, ts)

    def record_impression(self, user_id: str, item_ids: Sequence[str], surface: str, ts: float | None = None) -> str:
        """Persist that ``item_ids`` were shown to the shopper on ``surface`` (click-through joined
        on the device: :meth:`EventStore.record_impression`). Raises InputError, UnknownItemError."""
        ids = _str_seq("item_ids", item_ids)
        for item_id in ids:
            self.catalog.row(item_id)
        return self.events.record_impression(user_id, ids, surface, ts)

    def history(self, user_id: str) -> list[Event]:
        """The shopper's stored events, oldest first (``[]`` for an unknown or forgotten shopper).

        Events live in ``state_dir/events.sqlite`` (see :meth:`open` for where the state folder is);
        at most ``max_history`` per shopper are kept, the oldest dropped first.

        Raises:
            InputError: an empty user id.
        """
        return list(self.events.history(user_id))  # a copy: the store's list is its cache

    def forget(self, user_id: str) -> None:
        """Delete every event of the shopper, leaving no copy in the database or its WAL file, and
        drop their cached user vector; their next ``recommend`` is a cold start.

        Raises:
            InputError: an empty user id. EventStoreBusyError: the events are deleted but another
                connection still holds an old snapshot, so the WAL is truncated later; retry to
                be sure no bytes are left.
        """
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
        rows = cat.index.rows_of([e.item_id for e in recent]).tolist()  # -1: not in this catalog
        steps = collapse((r, ACTION_IDS[e.action]) for r, e in zip(rows, recent, strict=True) if r >= 0)
        vec = None
        if steps:
            (u,) = self._tower.run(["user"], tower_feed([steps], self.max_events, cat.vectors))
            vec = np.ascontiguousarray(u[0], np.float32)
            if not np.isfinite(vec.sum()):  # one reduction: NaN or inf anywhere makes the sum non-finite
                raise BundleError(f"{self.bundle}: the user tower produced NaN/inf")
        with self._lock:
            self._cache[user_id] = (gen, cat.version, vec, steps)
        return vec, steps

    def _rank_rows(
        self,
        cat: Catalog,
        query: np.ndarray | None,
        k: int,
        mask: np.ndarray | None,
        skip: frozenset[int] = frozenset(),
        top: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[list[int], list[float]]:
        """The k best rows for ``query`` among those ``mask`` allows, leaving out the rows in ``skip``,
        and their scores (the bundle's popularity when ``query`` is None: cold start).

        ``skip`` (a shopper's seen items) is applied by asking the kernel for k + len(skip) rows and
        dropping them: the same result as masking them (ties keep their row order) without building
        a catalog-sized mask on every call. ``top`` is that kernel answer when the caller already
        has it (:meth:`recommend_many`: one batch scan for many shoppers).
        """
        if query is None:  # cold start: the bundle's popularity, best first, ties to the lower row
            rows = cat.popular_rows(k, mask, skip)
            return rows, [float(cat.popularity[r]) for r in rows]
        if top is None:
            want = min(k + len(skip), len(cat))
            top = cat.topk(query, want, mask=mask, threads=self.threads)
        ids, scores = top
        rows, kept = [], []
        for r, s in zip(ids.tolist(), scores.tolist(), strict=True):
            if r >= 0 and r not in skip:
                rows.append(r)
                kept.append(s)
                if len(rows) == k:
                    break
        return rows, kept

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

        Each item says why it is there (``Item.reason``): ``co-occurrence`` with the recent items
        whose neighbour lists gave it the most weight (hybrid), ``history`` with the recent item
        it is closest to (the tower's results, and the hybrid's results that no neighbour list
        holds), ``popular`` for a shopper without history. ``Item.score_kind`` is ``fused``
        (hybrid), ``cosine`` (tower) or ``popularity`` (cold start).

        Raises:
            InputError: k not a positive integer, an unknown ranker, diversity outside [0, 1], a bad
                filter (UnknownFilterValueError: a category or brand the catalog lacks).
        """
        _check_options(k, diversity, ranker)
        cat = self.catalog  # one consistent catalog for the whole call
        m = self.merch.at(cat, "recommend")  # and one set of rules
        mask = m.mask(cat.mask(where))
        q = self._shopper(cat, user_id, exclude_seen)
        return self._recommend_one(cat, q, self._plan(cat, q, k, diversity, ranker, m), k, mask, diversity, m)

    def recommend_many(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        where: Mapping[str, Any] | None = None,
        diversity: float = 0.0,
        ranker: str = "hybrid",
    ) -> list[list[Item]]:
        """:meth:`recommend` for many shoppers: one result list per user id, in their order, each
        equal to the single call's (the same catalog version for all of them).

        The tower's top-k scans run as one batch per ``BATCH`` shoppers (the kernel reads each block
        of the catalog once for the whole batch), the rest per shopper as in :meth:`recommend`.

        Raises:
            InputError: ``user_ids`` not a list of strings, or what :meth:`recommend` raises.
        """
        users = _str_seq("user_ids", user_ids)
        _check_options(k, diversity, ranker)
        cat = self.catalog
        m = self.merch.at(cat, "recommend")
        mask = m.mask(cat.mask(where))
        out: list[list[Item]] = []
        for start in range(0, len(users), BATCH):
            shoppers = [self._shopper(cat, u, exclude_seen) for u in users[start : start + BATCH]]
            plans = [self._plan(cat, q, k, diversity, ranker, m) for q in shoppers]
            scan = [i for i, p in enumerate(plans) if p.want > 0]
            tops: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            if scan:
                width = max(plans[i].want for i in scan)
                queries = np.stack([shoppers[i].u for i in scan])
                ids, scores = cat.topk(queries, width, mask=mask, threads=self.threads)
                # the kernel's order is total (score, then row), so a shopper's first `want` of the
                # wider answer are exactly what a scan for `want` gives
                tops = {i: (ids[j, : plans[i].want], scores[j, : plans[i].want]) for j, i in enumerate(scan)}
            for i, (q, plan) in enumerate(zip(shoppers, plans, strict=True)):
                out.append(self._recommend_one(cat, q, plan, k, mask, diversity, m, tops.get(i)))
        return out

    def _shopper(self, cat: Catalog, user_id: str, exclude_seen: bool) -> _Shopper:
        """What a recommend call reads about one shopper, read once."""
        gen = self.events.generation(user_id)
        events = self.events.history(user_id)  # read once: for the seen rows and the user vector
        seen: frozenset[int] = frozenset()
        if exclude_seen:  # one batch lookup of the history's ids (-1: a sync removed the item)
            rows = cat.index.rows_of([e.item_id for e in events])
            seen = frozenset(rows[rows >= 0].tolist())
        u, steps = self._user_state(user_id, cat, (gen, events))
        return _Shopper(u, steps, seen, exclude_seen)

    def _plan(self, cat: Catalog, q: _Shopper, k: int, diversity: float, ranker: str, m: RuleSet) -> _Plan:
        pool = m.pool(k, max(50, 5 * k) if diversity > 0 else k)  # more candidates when rules reorder
        if q.u is None:
            return _Plan("popular", pool, 0)
        if self.ranker is None or ranker == "tower":
            return _Plan("tower", pool, min(pool + len(q.seen), len(cat)))
        return _Plan("hybrid", pool, min(self.ranker.candidates + pool + len(q.seen), len(cat)))

    def _recommend_one(
        self,
        cat: Catalog,
        q: _Shopper,
        plan: _Plan,
        k: int,
        mask: np.ndarray | None,
        diversity: float,
        m: RuleSet,
        top: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> list[Item]:
        keep = m.keep(k, plan.pool)  # what MMR orders: k, or the whole pool when rules follow (device/rules.py)
        if plan.path != "hybrid":
            rows, scores = self._rank_rows(cat, q.u, plan.pool, mask, q.seen, top)
            if diversity > 0 and len(rows) > 1:
                r = np.asarray(rows, np.int64)
                pick = mmr(r, np.asarray(scores, np.float32), cat.vectors(r), keep, float(diversity))
                rows, scores = [rows[i] for i in pick], [scores[i] for i in pick]
            rows, scores, pins = m.apply(rows, scores, k, mask, q.seen)
            if plan.path == "popular":
                return m.items(cat, rows, scores, "popularity", POPULAR, pins)
            why = self._reasons(cat, np.asarray(rows, np.int64), q.steps, None)
            return m.items(cat, rows, scores, "cosine", why, pins)
        hist = step_weights(q.steps, self.ranker)
        h_rows, scores = self._hybrid(cat, q.u, q.steps, plan.pool, mask, q.seen, not q.seen_excluded, top)
        if diversity > 0 and len(h_rows) > 1:
            pick = mmr(h_rows, scores, cat.vectors(h_rows), keep, float(diversity))
            h_rows, scores = h_rows[pick], scores[pick]
        rows, scores, pins = m.apply(h_rows.tolist(), scores.tolist(), k, mask, q.seen)
        why = self._reasons(cat, np.asarray(rows, np.int64), q.steps, hist)
        return m.items(cat, rows, scores, "fused", why, pins)

    def _reasons(self, cat: Catalog, rows: np.ndarray, steps: list[tuple[int, int]], hist) -> list[Reason]:
        """Why each of ``rows`` is recommended (device/hybrid.py ``reasons``)."""
        return reasons(cat, rows, steps, hist, self.max_events)

    def _hybrid(self, cat: Catalog, u, steps, k, mask, seen, allow_seen, top=None) -> tuple[np.ndarray, np.ndarray]:
        """The hybrid ranking of one shopper (device/hybrid.py ``hybrid``) with this bundle's ranker."""
        return hybrid(self.ranker, cat, u, steps, k, mask, seen, allow_seen, top, threads=self.threads)

    def similar(self, item_id: str, k: int = 10, *, where: Mapping[str, Any] | None = None) -> list[Item]:
        """Items closest to ``item_id`` (never the item itself), best first, by cosine similarity
        (``reason`` ``similar``, naming the item).

        Raises:
            UnknownItemError: the item is not in the catalog; InputError: k not a positive integer
                or a bad filter.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        cat = self.catalog  # one consistent catalog for the whole call
        m = self.merch.at(cat, "similar")  # and one set of rules
        row, mask = cat.row(item_id), m.mask(cat.mask(where))
        skip = frozenset((row,))
        rows, scores = self._rank_rows(cat, cat.vectors(np.array([row]))[0], m.pool(k, k), mask, skip)
        rows, scores, pins = m.apply(rows, scores, k, mask, skip)
        why = Reason("similar", (item_id,), f"similar to “{cat.title(row)}”")
        return m.items(cat, rows, scores, "cosine", why, pins)

    def search_many(self, texts: Sequence[str], k: int = 10, **options: Any) -> list[list[Item]]:
        """:meth:`search` for many queries: one result list per text, in their order, each equal to
        the single call's; ``options`` are :meth:`search`'s keywords (``where``, …).

        For now one :meth:`search` after another: the text encoder runs once per query either way,
        and the lexical/dense fusion is per query.

        Raises:
            InputError: ``texts`` not a list of strings, or what :meth:`search` raises.
        """
        return [self.search(t, k, **options) for t in _str_seq("texts", texts)]

    def search(
        self, text: str, k: int = 10, *, where: Mapping[str, Any] | None = None, mode: str = "hybrid", user_id=None
    ) -> list[Item]:
        """Items matching a free-text query (device/search.py): ``mode="hybrid"`` fuses the catalog's
        FTS5 index (BM25, typo-corrected) with the encoder's dense scan (dense-only when the catalog
        has no usable FTS index); ``"dense"`` or ``"lexical"`` runs one of them alone. ``user_id``
        (hybrid only, off by default) personalises it: the shopper's user vector re-ranks the fused
        candidates (``search.personal``).

        Raises:
            InputError: text not a string or only whitespace, k not a positive integer, an unknown
                mode or a bad filter.
        """
        from shelfrank.device import search as srch

        cat = self.catalog  # one consistent catalog for the whole call
        params = srch.SearchParams.from_manifest(self.manifest.search)
        enc = None if mode == "lexical" else self.encoder
        u = srch.personal(mode, user_id, lambda uid: self.user_vector(uid, cat))
        rows, scores = srch.search(
            cat, enc, text, k, where=where, mode=mode, params=params, threads=self.threads, user=u
        )
        kind = "lexical" if mode == "lexical" else "fused" if mode == "hybrid" and cat.lexical.available else "cosine"
        return cat.items(rows.tolist(), scores.tolist(), score_kind=kind)

    @property
    def encoder(self) -> TextEncoder:
        """The bundle's text encoder, loaded on first use (thread-safe; may take a while on a GPU board)."""
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
        """Close the event store (pending writes are already durable); idempotent. The recommender
        must not be used afterwards."""
        if self._closed:
            return
        self._closed = True
        self.events.close()

    def __enter__(self) -> Recommender:
        """``with Recommender.open(bundle) as rec:`` closes the recommender when the block ends."""
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Shopper(NamedTuple):
    """What a recommend call reads about one shopper: the user vector (None: no usable history),
    the collapsed (row, action) steps it was made from, and the rows to leave out (seen items)."""

    u: np.ndarray | None
    steps: list[tuple[int, int]]
    seen: frozenset[int]
    seen_excluded: bool  # exclude_seen: the hybrid may then not bring a seen item back


class _Plan(NamedTuple):
    """How one shopper is ranked: ``path`` (popular, tower, hybrid), the ``pool`` of results before
    diversity, and how many rows the tower's top-k scan must return (0: no scan)."""

    path: str
    pool: int
    want: int
