"""One result schema per bench, one printer per format (Markdown, JSON, CSV).

The llama-bench shape (``tools/llama-bench``: ``test::get_fields``, then a printer per format over
the same fields): a bench's result is a typed record — a dataclass of system info, run facts and
typed rows — and the printers below know nothing of any bench. A record says three things:

- ``document()``: the JSON document (the record's own fields, nested as the record nests them;
  the keys other tools read are these field names);
- ``facts()``: the header, label → text (system info, configuration, load);
- ``tables()``: :class:`Table` s of flat row dataclasses whose fields carry a label and a format
  (:func:`col`); :func:`get_fields` lists them in order.

:func:`to_markdown` prints the facts and one table per :class:`Table`; :func:`to_csv` prints one
line per row of every table, each with the table's key and the system facts (as llama-bench's
CSV repeats the build and CPU on every line); :func:`to_json` prints ``document()``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "PRINTERS",
    "Column",
    "Record",
    "Table",
    "col",
    "get_fields",
    "md_table",
    "to_csv",
    "to_json",
    "to_markdown",
]


@dataclass(frozen=True)
class Column:
    """One field of a row type: its name (the JSON/CSV key), Markdown label, format and alignment."""

    name: str
    label: str
    fmt: str = ""
    align: str = "r"


def col(label: str, fmt: str = "", *, align: str = "r", default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its column metadata (``fmt`` is a format spec, e.g. ``".3f"``, ``","``)."""
    meta = {"label": label, "fmt": fmt, "align": align}
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def get_fields(row_type: type) -> list[Column]:
    """The columns of a row dataclass, in declaration order (llama-bench's ``test::get_fields``)."""
    out = []
    for f in dataclasses.fields(row_type):
        m = f.metadata
        out.append(Column(f.name, m.get("label", f.name), m.get("fmt", ""), m.get("align", "r")))
    return out


@dataclass
class Table:
    """Rows of one row dataclass, printed as one Markdown table (``title``) and CSV lines (``key``)."""

    key: str
    title: str
    rows: Sequence[Any]
    note: str = ""
    row_type: type | None = None  # when ``rows`` may be empty

    def columns(self) -> list[Column]:
        typ = self.row_type or (type(self.rows[0]) if self.rows else None)
        return get_fields(typ) if typ is not None else []


class Record:
    """Base of every bench's record: a dataclass with ``facts()``, ``tables()`` and ``document()``.

    ``record[key]`` reads the JSON document (so a record reads like the report it prints).
    """

    title: str = "shelfrank bench"

    def facts(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def tables(self) -> list[Table]:
        raise NotImplementedError

    def system_facts(self) -> dict[str, Any]:
        """Flat system facts repeated on every CSV line (default: the ``system`` field)."""
        return dict(getattr(self, "system", {}) or {})

    def document(self) -> dict[str, Any]:
        return _plain(self)

    def __getitem__(self, key: str) -> Any:
        return self.document()[key]


def _plain(o: Any) -> Any:
    """Dataclasses, numpy scalars/arrays, tuples → plain JSON values; dict keys as they are."""
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return {f.name: _plain(getattr(o, f.name)) for f in dataclasses.fields(o)}
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return o


def fmt_value(v: Any, fmt: str = "") -> str:
    """One cell: ``n/a`` for None, yes/no for bools, lists space-joined, numbers by ``fmt``."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return " ".join(fmt_value(x, fmt) for x in v)
    if isinstance(v, dict):
        return "; ".join(f"{k}: {fmt_value(x, fmt)}" for k, x in v.items())
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if fmt and isinstance(v, (int, float, np.generic)):
        try:
            return format(v, fmt)
        except (TypeError, ValueError):
            return str(v)
    return str(v)


def md_table(header: list[str], rows: list[list[str]], align: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table; ``align`` per column, ``"l"`` or ``"r"``."""
    align = list(align or ["l"] + ["r"] * (len(header) - 1))
    sep = ["---:" if a == "r" else ":---" for a in align]
    esc = [[c.replace("|", "\\|").replace("\n", " ") for c in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines)


def to_markdown(record: Record) -> str:
    """The facts as a two-column table, then one table per :class:`Table` with every field."""
    out = [f"# {record.title}", ""]
    out.append(md_table(["", "value"], [[f"**{k}**", v] for k, v in record.facts()], ["l", "l"]))
    out.append("")
    for t in record.tables():
        cols = t.columns()
        out += [f"## {t.title}", ""]
        if not t.rows:
            out += ["(no rows in this run)", ""]
        else:
            rows = [[fmt_value(getattr(r, c.name), c.fmt) for c in cols] for r in t.rows]
            out += [md_table([c.label for c in cols], rows, [c.align for c in cols]), ""]
        if t.note:
            out += [t.note, ""]
    return "\n".join(out).rstrip("\n") + "\n"


def to_json(record: Record) -> str:
    """``record.document()`` as indented JSON (numpy values as plain numbers)."""
    return json.dumps(record.document(), indent=1, default=_json_default) + "\n"


def to_csv(record: Record) -> str:
    """One line per row of every table: ``table``, the system facts, then the union of row fields.

    Lists are ``;``-joined; a field a table does not have is empty on its lines.
    """
    system = {f"system.{k}": v for k, v in record.system_facts().items()}
    tables = record.tables()
    names: list[str] = []
    for t in tables:
        for c in t.columns():
            if c.name not in names:
                names.append(c.name)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", *system, *names])
    sys_vals = [_csv_value(v) for v in system.values()]
    for t in tables:
        have = {c.name for c in t.columns()}
        for r in t.rows:
            w.writerow([t.key, *sys_vals, *(_csv_value(getattr(r, n)) if n in have else "" for n in names)])
    return buf.getvalue()


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return ";".join(_csv_value(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(_plain(v), default=_json_default, sort_keys=True)
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


PRINTERS: dict[str, Callable[[Record], str]] = {"md": to_markdown, "json": to_json, "csv": to_csv}


def emit(record: Record, args: Any, progress: Callable[[str], None] | None = None) -> str:
    """Print ``record`` to stdout in ``args.format`` (default md); write ``--md``/``--json``/``--csv``
    files when given. Returns the Markdown text."""
    from pathlib import Path

    fmt = getattr(args, "format", None) or "md"
    text = PRINTERS[fmt](record)
    print(text, end="" if text.endswith("\n") else "\n")
    for name in ("md", "json", "csv"):
        out = getattr(args, name, None)
        if out:
            Path(out).write_text(PRINTERS[name](record))
            if progress is not None:
                progress(f"wrote {out}")
    return text
