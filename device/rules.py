"""Merchandising rules on the device: boost, pin and bury (by item id or by ``where`` filter), per-category
caps and allow/deny lists, applied to ``recommend``, ``recommend_many`` and ``similar`` (docs/device.md,
"Merchandising rules"; the document is ``device/formats/rules.py``'s :class:`Rules`).

Order of application, every call:

1. **allow, deny** join the call's ``where`` as the scan's mask: a denied item is never a candidate
   (a list is never left short by them), and a pin must pass them too.
2. the ranker (and MMR) rank a pool of candidates, larger than ``k`` when a list rule is set.
3. **boost** (an item moves up its boosts' positions) and **bury** (to the end, in order): one stable
   sort of the pool.
4. **pin**: the pinned items are chosen (a filter pin: the best-ranked match, else the most popular)
   and taken out of the list.
5. **category_caps**: at most ``n`` items of a category in the list; the next candidates move up.
6. the first ``k`` − pins remain, and each pin goes to its position (reason ``pinned``).

Where the document comes from (``Merchandising.doc``): a **local** one (``Recommender.set_rules``,
``STATE/rules/local.json``: a kiosk) wins over the **published** one (``shelfrank publish --rules``,
synced and pinned by the signed index, ``STATE/rules/published.json``) until it is cleared. A
document is compiled once per catalog object (a bool/int array per selector) and checked strictly
when it is set or synced (a category, brand or pinned id the serving catalog lacks is a
``RulesError``, and the previous rules keep serving); against a later catalog unknown names match
nothing (logged).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from shelfrank.device.catalog import Catalog, Item, Reason
from shelfrank.device.formats import rules as rfmt
from shelfrank.device.formats.request import Where
from shelfrank.errors import InputError, RulesError, UnknownFilterValueError

logger = logging.getLogger(__name__)

__all__ = ["PINNED", "Compiled", "Merchandising", "RuleSet"]

#: the reason of a pinned item
PINNED = Reason("pinned", (), "featured by the shop")
#: the most candidates a list rule adds to the pool beyond k
MAX_EXTRA = 1000


class RuleSet:
    """What one call applies of the rules; this base applies none (``PLAIN``: the ranker's list as it is)."""

    lists = False

    def mask(self, mask: np.ndarray | None) -> np.ndarray | None:
        return mask

    def pool(self, k: int, pool: int) -> int:
        return pool

    def keep(self, k: int, pool: int) -> int:
        return k

    def apply(self, rows, scores, k, mask, skip) -> tuple[list[int], list[float], frozenset[int]]:
        return list(rows)[:k], list(scores)[:k], frozenset()

    def items(self, cat: Catalog, rows, scores, kind: str, why, pinned: frozenset[int]) -> list[Item]:
        if pinned:
            per = [why] * len(rows) if isinstance(why, Reason) else list(why)
            why = [PINNED if r in pinned else w for r, w in zip(rows, per, strict=True)]
        return cat.items(rows, scores, score_kind=kind, reasons=why)


PLAIN = RuleSet()


class Compiled(RuleSet):
    """One rules document against one catalog object: per-row arrays of what its selectors select."""

    def __init__(self, doc: rfmt.Rules, cat: Catalog, *, strict: bool, prev: Compiled | None = None) -> None:
        """``prev``: this document compiled for the catalog ``cat`` was made from by a stock update
        (the same rows): the selectors whose filter reads no stock or price are taken from it.

        Raises: RulesError (``strict`` only): a rule names a category, brand or pinned item id
        this catalog lacks, or a filter value the catalog refuses."""
        self.doc, self.cat, self.strict = doc, cat, strict
        same = prev is not None and prev.doc is doc and prev.cat.rows is cat.rows and prev.cat.version == cat.version
        self._prev = prev.parts if same else {}
        self.parts: dict[str, Any] = {}  # what each selector selected (read-only once made)
        n = len(cat)
        allowed = None
        if doc.allow is not None:
            allowed = self._select(doc.allow, "allow")
        if doc.deny is not None:
            denied = self._select(doc.deny, "deny")
            allowed = ~denied if allowed is None else allowed & ~denied
        self.allowed = allowed
        self.boost = None
        for i, b in enumerate(doc.boost):
            if self.boost is None:
                self.boost = np.zeros(n, np.int64)
            self.boost += self._select(b, f"boost[{i}]") * b.positions
        self.max_boost = 0 if self.boost is None or not n else int(self.boost.max())
        self.bury = None
        for i, s in enumerate(doc.bury):
            m = self._select(s, f"bury[{i}]")
            self.bury = m if self.bury is None else self.bury | m
        self.cap_limit = None  # per category code: the most items of it in a list (0: no cap)
        if doc.category_caps:
            names = cat.categories
            missing = [c for c in doc.category_caps if c != "*" and c not in names]
            if missing:
                self._unknown(
                    f"category_caps: {', '.join(map(repr, missing[:5]))} not in catalog version {cat.version}"
                )
            default = doc.category_caps.get("*", 0)
            self.cap_limit = np.asarray([doc.category_caps.get(c, default) for c in names] + [0], np.int64)
        # pins, by position: (position, the pinned row or -1, the rows a filter pin takes, most popular first)
        self.pins: list[tuple[int, int, np.ndarray | None, np.ndarray | None]] = []
        for i, p in enumerate(sorted(doc.pin, key=lambda p: p.position)):
            if p.item_id is not None:
                row = cat.index.get(p.item_id)
                if row is None:
                    self._unknown(f"pin[{i}]: item {p.item_id!r} not in catalog version {cat.version}")
                    continue
                self.pins.append((p.position, int(row), None, None))
            else:
                self.pins.append((p.position, -1, *self._filter_pin(p.where, f"pin[{i}]")))
        self.lists = bool(self.boost is not None or self.bury is not None or self.cap_limit is not None or self.pins)
        self._prev = {}  # the previous compile's arrays are not kept alive by this one

    # ---- compiling ------------------------------------------------------------------------------

    def _unknown(self, msg: str) -> None:
        if self.strict:
            raise RulesError(f"rules version {self.doc.version}: {msg}; fix the rule")
        logger.warning("rules version %d: %s; that part matches nothing", self.doc.version, msg)

    def _where(self, where: Where | None, what: str) -> np.ndarray:
        f = None if where is None else where.as_filter()
        if f is None:
            return np.zeros(len(self.cat), bool)
        try:
            m = self.cat.mask(f)
        except UnknownFilterValueError as e:
            self._unknown(f"{what}.{e.field}: {e}")
            return np.zeros(len(self.cat), bool)
        except InputError as e:
            if self.strict:
                raise RulesError(f"rules version {self.doc.version}: {what}.where: {e}; fix the rule") from e
            return np.zeros(len(self.cat), bool)
        return np.ones(len(self.cat), bool) if m is None else m

    def _reused(self, where: Where | None, what: str) -> Any:
        """The previous compile's part ``what`` when its filter reads no stock or price (else None)."""
        f = None if where is None else where.as_filter()
        if f is not None and {"in_stock", "min_price", "max_price"} & set(f):
            return None
        return self._prev.get(what)

    def _select(self, sel: rfmt.Selector, what: str) -> np.ndarray:
        m = self._reused(sel.where, what)
        if m is None:
            m = self._where(sel.where, what)
            if sel.ids:
                rows = self.cat.index.rows_of(sel.ids)
                m[rows[rows >= 0]] = True
        self.parts[what] = m
        return m

    def _filter_pin(self, where: Where | None, what: str) -> tuple[np.ndarray, np.ndarray]:
        """(the rows a filter pin may take, those rows most popular first, ties to the lower row)."""
        part = self._reused(where, what)
        if part is None:
            m = self._where(where, what)
            cand = np.flatnonzero(m)
            part = (m, cand[np.lexsort((cand, -self.cat.popularity[cand]))])
        self.parts[what] = part
        return part

    # ---- one call -------------------------------------------------------------------------------

    def mask(self, mask: np.ndarray | None) -> np.ndarray | None:
        """The call's mask with the allow/deny lists (a new array; None: nothing filtered)."""
        if self.allowed is None:
            return mask
        return self.allowed if mask is None else mask & self.allowed

    def pool(self, k: int, pool: int) -> int:
        """How many candidates to rank: more than ``k`` when boosts, buries, caps or pins may reorder
        or drop some (k + max(50, 2k, the largest boost), at most k + MAX_EXTRA)."""
        if not self.lists:
            return pool
        return max(pool, k + min(max(50, 2 * k, self.max_boost), MAX_EXTRA))

    def keep(self, k: int, pool: int) -> int:
        """How many of the ranked pool MMR orders (all of it when list rules follow)."""
        return pool if self.lists else k

    def apply(
        self, rows: Sequence[int], scores: Sequence[float], k: int, mask: np.ndarray | None, skip: frozenset[int]
    ) -> tuple[list[int], list[float], frozenset[int]]:
        """The final ``k`` (rows, scores) from the ranked pool, and the pinned rows (the module's order).

        ``mask`` is the call's (with allow/deny) and ``skip`` the rows it leaves out (seen items, the
        query item): a pin obeys both. A pinned item keeps its score when it was ranked, else takes
        the score of the slot it fills.
        """
        rows, scores = list(rows), list(scores)
        if not self.lists:
            return rows[:k], scores[:k], frozenset()
        own = dict(zip(rows, scores, strict=True))
        if rows and (self.boost is not None or self.bury is not None):
            r = np.asarray(rows, np.int64)
            at = np.arange(len(r))
            up = self.boost[r] if self.boost is not None else np.zeros(len(r), np.int64)
            down = self.bury[r] if self.bury is not None else np.zeros(len(r), bool)
            # buried last; then by boosted place, a boosted item first on a tie (it moved up that far); then rank
            order = np.lexsort((at, -up, at - up, down)).tolist()
            rows, scores = [rows[i] for i in order], [scores[i] for i in order]
        pinned = self._pinned(rows, k, mask, skip)
        if pinned:
            taken = {row for _, row in pinned}
            kept = [i for i, row in enumerate(rows) if row not in taken]
            rows, scores = [rows[i] for i in kept], [scores[i] for i in kept]
        if self.cap_limit is not None:
            codes = self.cat.category_codes[np.asarray(rows, np.int64)].tolist() if rows else []
            seen: dict[int, int] = {}
            kept = []
            for i, c in enumerate(codes):
                lim = int(self.cap_limit[c])  # code -1 (no category): the trailing 0, never capped
                if lim and seen.get(c, 0) >= lim:
                    continue
                seen[c] = seen.get(c, 0) + 1
                kept.append(i)
            rows, scores = [rows[i] for i in kept], [scores[i] for i in kept]
        rows, scores = rows[: k - len(pinned)], scores[: k - len(pinned)]
        for pos, row in pinned:  # by position: each lands where it was asked, or at the end
            at = min(pos - 1, len(rows))
            slot = scores[at] if at < len(scores) else (scores[-1] if scores else 0.0)
            rows.insert(at, row)
            scores.insert(at, own.get(row, slot))
        return rows, scores, frozenset(row for _, row in pinned)

    def _pinned(self, rows: list[int], k: int, mask, skip) -> list[tuple[int, int]]:
        """(position, row) of the pins this call shows, by position (at most k)."""
        out: list[tuple[int, int]] = []
        used: set[int] = set()

        def ok(row: int) -> bool:
            return row not in used and row not in skip and (mask is None or bool(mask[row]))

        for pos, row, m, cand in self.pins:
            if pos > k:
                break
            if m is not None:  # a filter pin: the best-ranked candidate passing it, else the most popular
                row = next((r for r in rows if m[r] and ok(r)), -1)
                if row < 0:
                    row = next((int(r) for r in cand if ok(int(r))), -1)
            if row >= 0 and ok(row):
                out.append((pos, row))
                used.add(row)
        return out


# ---- where a recommender's rules come from ------------------------------------------------------


class Merchandising:
    """The rules a recommender applies (``rec.merch``): the local document when one is set, else the
    published one. Swapped by reference: a call already running keeps the rules it started with."""

    LOCAL, PUBLISHED = "local.json", "published.json"

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "rules"
        self.local: rfmt.Rules | None = None
        #: (the first catalog version it applies to, the document), newest last (at most 2)
        self.published: list[tuple[int, rfmt.Rules]] = []
        self._compiled: tuple[rfmt.Rules, Catalog, Compiled] | None = None
        self._stat: tuple | None = None
        self.refresh()

    def doc(self, cat: Catalog) -> rfmt.Rules | None:
        """The document that serves ``cat``: the local one, else the newest published one made for
        this catalog version or an older one (sync installs it before the catalog it came with)."""
        if self.local is not None:
            return self.local
        for since, doc in reversed(self.published):
            if since <= cat.version:
                return doc
        return None

    def at(self, cat: Catalog, surface: str) -> RuleSet:
        """What one call on ``surface`` (``recommend``, ``similar``) applies (``PLAIN``: nothing)."""
        doc = self.doc(cat)
        if doc is None or surface not in doc.surfaces:
            return PLAIN
        if doc.expires is not None and doc.expires.timestamp() <= time.time():
            return PLAIN  # a sale that has ended
        hit = self._compiled
        if hit is not None and hit[0] is doc and hit[1] is cat:
            return hit[2]
        # two threads may both compile: the same answer; after a stock update most parts carry over
        c = Compiled(doc, cat, strict=False, prev=hit[2] if hit is not None else None)
        self._compiled = (doc, cat, c)
        return c

    def set_local(self, doc: Mapping[str, Any] | rfmt.Rules | None, cat: Catalog) -> rfmt.Rules | None:
        """Check ``doc`` against ``cat`` and make it the local document (written to
        ``STATE/rules/local.json`` first); None clears it (the published rules serve again).

        Raises:
            RulesError: the document breaks the format or names what ``cat`` lacks.
        """
        if doc is None:
            (self.dir / self.LOCAL).unlink(missing_ok=True)
            self.local = None
            self._stat = self._stats()
            return None
        rules = self._decode(doc, "set_rules")
        if rules.expires is not None and rules.expires.timestamp() <= time.time():
            raise RulesError(f"set_rules: expired at {rules.expires.isoformat()}; set a later expires or none")
        c = Compiled(rules, cat, strict=True)
        _write(self.dir / self.LOCAL, json.dumps(rfmt.encode(rules)).encode())
        self.local, self._compiled = rules, (rules, cat, c)
        self._stat = self._stats()
        return rules

    def check_published(self, raw: bytes, cat: Catalog, where: str) -> rfmt.Rules | None:
        """A downloaded ``rules.json`` checked against ``cat`` (the catalog it will serve): the document,
        or None when it is the version already installed.

        Raises:
            RulesError: not a rules document, older than the installed one (a rollback), expired,
                or naming a category, brand or pinned id ``cat`` lacks.
        """
        try:
            obj = json.loads(raw)
        except ValueError as e:
            raise RulesError(f"{where}: not valid JSON ({e}); republish the rules") from e
        doc = rfmt.decode_rules(obj, where=where, fix="republish the rules")
        have = self.published[-1][1].version if self.published else -1
        if doc.version < have:
            raise RulesError(
                f"{where}: version {doc.version} is older than the rules served ({have}): refusing a rollback"
            )
        if doc.version == have:
            return None
        if doc.expires is not None and doc.expires.timestamp() <= time.time():
            raise RulesError(f"{where}: expired at {doc.expires.isoformat()}; republish the rules")
        Compiled(doc, cat, strict=True)
        return doc

    def install_published(self, doc: rfmt.Rules, since: int) -> None:
        """Serve ``doc`` for catalog versions from ``since`` on (written to ``STATE/rules/published.json``
        first, so another process's ``refresh`` and the next open see it)."""
        body = {"since_catalog": since, "rules": rfmt.encode(doc)}
        _write(self.dir / self.PUBLISHED, json.dumps(body).encode())
        self.published = [*self.published[-1:], (since, doc)]
        self._stat = self._stats()

    def _decode(self, doc: Mapping[str, Any] | rfmt.Rules, where: str) -> rfmt.Rules:
        if isinstance(doc, rfmt.Rules):
            doc = msgspec.to_builtins(doc)
        if not isinstance(doc, Mapping):
            raise RulesError(f"{where}: a rules document is a mapping, got {type(doc).__name__}")
        return rfmt.decode_rules(dict(doc), where=where)

    def _stats(self) -> tuple:
        out = []
        for name in (self.LOCAL, self.PUBLISHED):
            try:
                st = os.stat(self.dir / name)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def refresh(self) -> bool:
        """Reload the documents when another process (``shelfrank sync``, a kiosk tool writing
        ``local.json``) changed them: one ``stat`` per file when nothing did. A file that does not
        decode is logged and the rules that were serving keep serving. True when something changed."""
        stat = self._stats()
        if stat == self._stat:
            return False
        self._stat = stat
        local_st, pub_st = stat
        try:
            self.local = None if local_st is None else self._decode(_read(self.dir / self.LOCAL), "local.json")
        except (RulesError, OSError, ValueError) as e:
            logger.warning("%s: unusable (%s); the rules that were serving keep serving", self.dir / self.LOCAL, e)
        try:
            if pub_st is not None:
                body = _read(self.dir / self.PUBLISHED)
                doc = rfmt.decode_rules(body.get("rules"), where=str(self.dir / self.PUBLISHED))
                since = int(body.get("since_catalog", 0))
                if not self.published or self.published[-1][1] != doc:
                    self.published = [*self.published[-1:], (since, doc)]
        except (RulesError, OSError, ValueError, TypeError, AttributeError) as e:
            logger.warning("%s: unusable (%s); the rules that were serving keep serving", self.dir / self.PUBLISHED, e)
        return True


def _read(path: Path) -> Any:
    return json.loads(path.read_bytes())


def _write(path: Path, data: bytes) -> None:
    """``data`` into ``path`` by a fsynced temporary file and a rename: a reader sees the old or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
