"""The endpoints of ``shelfrank serve``: each operation a typed request in, a typed response out,
answered from one opened :class:`~shelfrank.device.Recommender`.

This room knows the recommender and the request/response contracts (:mod:`shelfrank.device.formats`)
and nothing of HTTP: no methods, paths, status codes, headers or sockets. :mod:`shelfrank.device.service.routes`
maps HTTP requests onto these operations (and their refusals onto status codes), and
:mod:`shelfrank.device.service.serve`, the transport, carries the bytes.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from shelfrank import __version__
from shelfrank.device import formats as fmt
from shelfrank.device.kernel import active_isa
from shelfrank.device.service.metrics import Metrics, exposition
from shelfrank.errors import ShelfrankError

__all__ = ["OPERATIONS", "Operation", "Service", "ServiceClosing", "Unhealthy"]

# one log for the service, whichever room writes it (a 500's traceback, the access lines)
logger = logging.getLogger("shelfrank.device.service.serve")


class ServiceClosing(ShelfrankError):
    """The service is shutting down: it takes no new request."""


class Unhealthy(ShelfrankError):
    """``health`` found the catalog or the event store not answering."""


class Operation(NamedTuple):
    request: type | None  # the request body's struct (None: the operation takes no body)
    response: type
    summary: str


#: every operation by name: its typed bodies and what it does (the OpenAPI summary)
OPERATIONS: dict[str, Operation] = {
    "record": Operation(
        fmt.RecordRequest,
        fmt.RecordResponse,
        "Record one shopper event (durable before the answer); the next call reflects it.",
    ),
    "recommend": Operation(
        fmt.RecommendRequest,
        fmt.RecommendResponse,
        "Items for this shopper, best first; popular items when they have no history yet.",
    ),
    "similar": Operation(fmt.SimilarRequest, fmt.SimilarResponse, "Items closest to an item (never the item itself)."),
    "search": Operation(
        fmt.SearchRequest,
        fmt.SearchResponse,
        "Items matching free text, embedded on the device with the bundle's encoder.",
    ),
    "recommend_many": Operation(
        fmt.RecommendManyRequest,
        fmt.RecommendManyResponse,
        "recommend for many shoppers (one catalog version, one batch scan): one result list per user id, "
        "in order, each equal to recommend's.",
    ),
    "search_many": Operation(
        fmt.SearchManyRequest,
        fmt.SearchManyResponse,
        "search for many texts: one result list per text, in order, each equal to search's.",
    ),
    "impression": Operation(
        fmt.ImpressionRequest,
        fmt.ImpressionResponse,
        "Record the items a surface showed the shopper (durable); a click on one within 30 minutes counts "
        "for that surface's click-through in /metrics.",
    ),
    "history": Operation(
        fmt.UserRequest,
        fmt.HistoryResponse,
        "The shopper's stored events, oldest first ([] for an unknown or forgotten shopper).",
    ),
    "forget": Operation(
        fmt.UserRequest,
        fmt.ForgetResponse,
        "Delete every event of the shopper, leaving no trace in the database files.",
    ),
    "health": Operation(None, fmt.HealthResponse, "Liveness: the catalog and event store answer."),
    "status": Operation(
        None, fmt.StatusResponse, "Bundle and catalog versions, board, kernel ISA, uptime and request counts."
    ),
}


def _items(items: list) -> list[fmt.Item]:
    out = []
    for it in items:
        if not math.isfinite(it.score):  # msgspec would write null; a NaN score is a bug in the runtime
            raise RuntimeError(f"item {it.item_id!r} has a non-finite score {it.score}")
        out.append(
            fmt.Item(
                it.item_id,
                it.score,
                it.title,
                it.category,
                it.brand,
                it.price,
                it.in_stock,
                it.score_kind,
                it.reason,
                list(it.reason_items),
                it.reason_text,
            )
        )
    return out


class Service:
    """The operations over one opened Recommender; thread-safe.

    Args:
        rec: the opened recommender (the caller closes it).
        board: the board name, reported by ``status``.
        refresh_interval: seconds between checks for a catalog another process synced.
    """

    def __init__(self, rec: Any, *, board: str | None = None, refresh_interval: float = 1.0) -> None:
        self.rec, self.board = rec, board
        self.refresh_interval = float(refresh_interval)
        self.started = time.time()
        self._started_mono = time.monotonic()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self.closing = False
        self.metrics = Metrics()
        self._refresh_lock = threading.Lock()
        self._next_refresh = 0.0
        self._handlers: dict[str, Callable[[Any], msgspec.Struct]] = {
            "record": self._record,
            "recommend": self._recommend,
            "similar": self._similar,
            "search": self._search,
            "recommend_many": self._recommend_many,
            "search_many": self._search_many,
            "impression": self._impression,
            "history": self._history,
            "forget": self._forget,
            "health": self._health,
            "status": self._status,
        }

    def call(self, name: str, args: msgspec.Struct | None) -> msgspec.Struct:
        """Run operation ``name`` (a key of :data:`OPERATIONS`) on its decoded request body.

        Raises:
            ServiceClosing: :meth:`close` was called.
            Unhealthy: ``health`` found the catalog empty or the event store not answering.
            ShelfrankError: what the recommender raises for the input (an unknown item, …).
        """
        if not self._enter():
            raise ServiceClosing("the service is shutting down")
        try:
            self._maybe_refresh()
            return self._handlers[name](args)
        finally:
            self._leave()

    def count(self, name: str, outcome: int, seconds: float | None = None) -> None:
        """Count one answered request by operation and outcome (the status code ``status`` and
        ``/metrics`` report); ``seconds``, the time it took, goes into the latency histogram."""
        self.metrics.observe(name, outcome, seconds)

    def exposition(self) -> bytes:
        """The counters and the catalog's and surfaces' figures in the Prometheus text format (0.0.4)."""
        rec = self.rec
        cat = rec.catalog
        return exposition(
            self.metrics,
            build={"version": __version__, "isa": active_isa()},
            uptime_s=round(time.monotonic() - self._started_mono, 3),
            catalog_version=cat.version,
            catalog_items=len(cat),
            sync_age_s=self._sync_age(cat),
            surfaces=rec.events.click_through(),
        )

    def _sync_age(self, cat: Any) -> float | None:
        """Seconds since the sync wrote the served catalog's folder (None: the bundle's own catalog)."""
        if Path(cat.root) == Path(self.rec.bundle) / "catalog":
            return None
        try:
            return round(max(0.0, time.time() - os.stat(cat.root).st_mtime), 3)
        except OSError:
            return None

    def _enter(self) -> bool:
        with self._lock:
            if self.closing:
                return False
            self._inflight += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()

    def close(self, timeout: float = 10.0) -> bool:
        """Refuse new requests (503) and wait for the running ones; True when they all finished."""
        with self._lock:
            self.closing = True
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def _maybe_refresh(self) -> None:
        """At most once per ``refresh_interval``: serve a catalog another process synced."""
        now = time.monotonic()
        if now < self._next_refresh or not self._refresh_lock.acquire(blocking=False):
            return
        try:
            if now >= self._next_refresh:
                self._next_refresh = now + self.refresh_interval
                self.rec.refresh()
        except Exception:  # a broken synced catalog must not take queries down with it
            logger.exception("checking for a synced catalog failed; serving version %d", self.rec.catalog.version)
        finally:
            self._refresh_lock.release()

    # -- operations: a typed request in, a typed response out --

    def _record(self, a: fmt.RecordRequest) -> fmt.RecordResponse:
        ts = time.time() if a.ts is msgspec.UNSET else a.ts
        self.rec.record(a.user_id, a.item_id, a.action, ts)
        return fmt.RecordResponse(a.user_id, a.item_id, a.action, ts)

    def _recommend(self, a: fmt.RecommendRequest) -> fmt.RecommendResponse:
        version = self.rec.catalog.version
        items = self.rec.recommend(
            a.user_id, a.k, exclude_seen=a.exclude_seen, where=_where(a.where), diversity=a.diversity, ranker=a.ranker
        )
        return fmt.RecommendResponse(a.user_id, version, _items(items))

    def _similar(self, a: fmt.SimilarRequest) -> fmt.SimilarResponse:
        version = self.rec.catalog.version
        items = self.rec.similar(a.item_id, a.k, where=_where(a.where))
        return fmt.SimilarResponse(a.item_id, version, _items(items))

    def _search(self, a: fmt.SearchRequest) -> fmt.SearchResponse:
        version = self.rec.catalog.version
        items = self.rec.search(a.text, a.k, where=_where(a.where), mode=a.mode, user_id=a.user_id)
        return fmt.SearchResponse(version, _items(items))

    def _recommend_many(self, a: fmt.RecommendManyRequest) -> fmt.RecommendManyResponse:
        version = self.rec.catalog.version
        lists = self.rec.recommend_many(
            a.user_ids, a.k, exclude_seen=a.exclude_seen, where=_where(a.where), diversity=a.diversity, ranker=a.ranker
        )
        return fmt.RecommendManyResponse(
            version, [fmt.UserItems(u, _items(items)) for u, items in zip(a.user_ids, lists, strict=True)]
        )

    def _search_many(self, a: fmt.SearchManyRequest) -> fmt.SearchManyResponse:
        version = self.rec.catalog.version
        lists = self.rec.search_many(a.texts, a.k, where=_where(a.where))
        return fmt.SearchManyResponse(
            version, [fmt.TextItems(t, _items(items)) for t, items in zip(a.texts, lists, strict=True)]
        )

    def _impression(self, a: fmt.ImpressionRequest) -> fmt.ImpressionResponse:
        ts = time.time() if a.ts is msgspec.UNSET else a.ts
        surface = self.rec.record_impression(a.user_id, a.item_ids, a.surface, ts)
        return fmt.ImpressionResponse(a.user_id, surface, len(a.item_ids), ts)

    def _history(self, a: fmt.UserRequest) -> fmt.HistoryResponse:
        events = [fmt.Event(e.item_id, e.action, e.ts) for e in self.rec.history(a.user_id)]
        return fmt.HistoryResponse(a.user_id, events)

    def _forget(self, a: fmt.UserRequest) -> fmt.ForgetResponse:
        self.rec.forget(a.user_id)
        return fmt.ForgetResponse(a.user_id, True)

    def _health(self, _: None) -> fmt.HealthResponse:
        cat = self.rec.catalog
        try:
            self.rec.history("health-check")  # one SQLite read: the event store answers
            ok = len(cat) > 0
        except Exception as e:
            logger.exception("health check failed")
            raise Unhealthy(f"unhealthy: {e}") from e
        if not ok:
            raise Unhealthy(f"unhealthy: catalog version {cat.version} is empty")
        return fmt.HealthResponse("ok", cat.version, len(cat))

    def _status(self, _: None) -> fmt.StatusResponse:
        rec, cat, m = self.rec, self.rec.catalog, self.rec.manifest
        by_op: dict[str, int] = {}
        by_status: dict[str, int] = {}
        for (op, status), n in sorted(self.metrics.requests().items(), key=lambda kv: kv[0][1]):
            by_op[op] = by_op.get(op, 0) + n
            by_status[str(status)] = by_status.get(str(status), 0) + n
        return fmt.StatusResponse(
            service="shelfrank",
            version=__version__,
            bundle=fmt.BundleStatus(
                path=str(rec.bundle),
                format_version=m.format_version,
                created_at=m.created_at,
                model_sha256=m.model.sha256,
                publisher_key_id=m.publisher_key_id,
            ),
            catalog=fmt.CatalogStatus(
                version=cat.version,
                items=len(cat),
                bundle_version=m.catalog.version,
                source="bundle" if Path(cat.root) == Path(rec.bundle) / "catalog" else "synced",
            ),
            board=self.board,
            threads=int(rec.threads),
            isa=active_isa(),
            started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            uptime_s=round(time.monotonic() - self._started_mono, 3),
            requests=fmt.RequestCounts(sum(by_op.values()), by_op, by_status),
        )


def _where(where: fmt.Where | msgspec.UnsetType) -> dict[str, Any] | None:
    return None if where is msgspec.UNSET else where.as_filter()
