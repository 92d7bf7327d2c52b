"""A catalog delta on the device: decoded and checked (``read_delta``), then applied to the catalog
it starts from (``apply_delta``). The wire format is ``device/formats/index.py``'s (DeltaChanges,
DELTA_FILES); device/sync.py fetches the files.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np

from shelfrank.device import formats
from shelfrank.device.catalog_files import CatalogData
from shelfrank.device.codes import derive_codes
from shelfrank.device.formats import DeltaChanges
from shelfrank.errors import SyncError

__all__ = ["apply_delta", "check_rows", "load_npy", "read_delta"]


def load_npy(path: Path, dtype: type, shape: tuple[int, ...], where: str) -> np.ndarray:
    """The array in a .npy file, refused unless its header says exactly ``dtype`` and ``shape``."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                got_shape, fortran, got_dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                got_shape, fortran, got_dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            if got_dtype != np.dtype(dtype) or got_shape != shape or fortran:
                raise ValueError(
                    f"expected {np.dtype(dtype)} {shape} (C order), got {got_dtype} {got_shape}"
                    f"{' (Fortran order)' if fortran else ''}"
                )
            count = int(np.prod(shape))
            arr = np.fromfile(f, dtype, count)
            if arr.size != count or f.read(1):
                raise ValueError(f"the data is not {count} values of {np.dtype(dtype)}")
    except Exception as e:  # numpy's header parser raises ValueError, SyntaxError, tokenize.TokenError …
        raise SyncError(f"{where}: unusable array: {e}; republish the catalog") from e
    return arr.reshape(shape)


def check_rows(rows: np.ndarray, scales: np.ndarray, ids: list[str], where: str) -> None:
    """Scales and rows within what the encoder and ``quantize_rows`` produce (formats.ROW_SCALE_MAX).

    A row's int8 components move each by at most scale/2 from a unit-norm vector, so its
    dequantised norm is at most ``1 + sqrt(d)·scale/2``; anything beyond was not made by the encoder.
    """
    finite = np.isfinite(scales)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise SyncError(f"{where}: NaN or inf scale for item {ids[bad]!r}; republish the catalog")
    out = (scales < 0) | (scales > formats.ROW_SCALE_MAX)
    if out.any():
        bad = int(np.flatnonzero(out)[0])
        raise SyncError(
            f"{where}: scale {float(scales[bad]):g} of item {ids[bad]!r} is outside [0, {formats.ROW_SCALE_MAX:.6g}] "
            "(rows are unit-norm, so max|x|/127 <= 1/127); not made by the encoder, republish the catalog"
        )
    step = 4096  # rows at a time: a float copy of a whole snapshot would be 4x its rows
    for start in range(0, rows.shape[0], step):
        r, s = rows[start : start + step], scales[start : start + step].astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", r, r, dtype=np.int64)) * s
        bound = 1.0 + 1e-3 + np.sqrt(rows.shape[1]) * s / 2
        over = norms > bound
        if over.any():
            bad = int(np.flatnonzero(over)[0])
            raise SyncError(
                f"{where}: row of item {ids[start + bad]!r} has norm {norms[bad]:.4g} > {bound[bad]:.4g} "
                "(rows are unit-norm); not made by the encoder, republish the catalog"
            )


def apply_delta(
    base: CatalogData,
    changes: DeltaChanges,
    rows: np.ndarray,
    scales: np.ndarray,
    *,
    mean: np.ndarray | None = None,
) -> CatalogData:
    """Remove, then upsert (in place for known ids, appended for new ones).

    ``rows``/``scales`` are the delta's (already checked: one per upsert). Every per-row array of the
    new catalog is built by ``per_row`` from the same row map, so one added beside ``rows`` and
    ``scales`` stays aligned with the items.
    """
    removed = set(changes.remove)
    keep = np.asarray([i for i, it in enumerate(base.items) if it["item_id"] not in removed], np.int64)
    items = [dict(base.items[i]) for i in keep]
    # row j of the new catalog is base row keep[src[j]] when src[j] < len(keep), else delta row src[j] - len(keep)
    src = list(range(len(keep)))
    pos = {it["item_id"]: j for j, it in enumerate(items)}
    for k, rec in enumerate(changes.upsert):
        record = msgspec.structs.asdict(rec)
        j = pos.get(rec.item_id)
        if j is None:
            pos[rec.item_id] = len(items)
            items.append(record)
            src.append(len(keep) + k)
        else:
            items[j], src[j] = record, len(keep) + k
    take = np.asarray(src, np.int64)
    from_base = take < len(keep)

    def per_row(base_arr: np.ndarray, delta_arr: np.ndarray) -> np.ndarray:
        out = np.empty((len(take), *base_arr.shape[1:]), base_arr.dtype)
        out[from_base] = base_arr[keep[take[from_base]]]
        out[~from_base] = delta_arr[take[~from_base] - len(keep)]
        return out

    # the neighbour table follows the items, not the rows: a kept or updated item keeps its
    # neighbours (renumbered; removed ones leave the lists), an added item starts with none
    nbr = base.neighbors_for(np.concatenate([keep, np.full(len(items) - len(keep), -1, np.int64)]))
    # the binary codes follow the rows: a kept item keeps its code, an added or updated one gets the
    # code of its new row (derived here with the bundle's mean); no mean, no codes (exact scans)
    codes = None
    if mean is not None:
        delta_codes = derive_codes(rows, scales, mean)
        codes = per_row(base.codes, delta_codes) if base.codes is not None else None
        if codes is None:  # a base without codes: every row's from its row
            codes = derive_codes(per_row(base.rows, rows), per_row(base.scales, scales), mean)
    return CatalogData(items, per_row(base.rows, rows), per_row(base.scales, scales), nbr, codes)


def read_delta(
    paths: dict[str, Path], *, span: tuple[int, int], dim: int, where: str
) -> tuple[DeltaChanges, np.ndarray, np.ndarray]:
    """A downloaded delta (``paths``: its DELTA_FILES) decoded and checked: what ``apply_delta`` takes.

    Raises:
        SyncError: changes.json breaks the format or is for another ``span`` (from, to); the arrays
            are not one int8 row of ``dim`` and one float32 scale per upsert; a scale or row the
            encoder cannot produce.
    """
    try:
        raw = paths["changes.json"].read_bytes()
    except OSError as e:
        raise SyncError(f"{where}: unreadable changes.json: {e}") from e
    changes = formats.decode_delta_changes(raw, where=f"{where}/changes.json")
    if (changes.from_, changes.to) != span:
        raise SyncError(
            f"{where}/changes.json: says {changes.from_}-{changes.to}, the index {span[0]}-{span[1]}; "
            "republish the catalog"
        )
    n = len(changes.upsert)
    rows = load_npy(paths["rows.i8.npy"], np.int8, (n, dim), f"{where}/rows.i8.npy")
    scales = load_npy(paths["scales.f32.npy"], np.float32, (n,), f"{where}/scales.f32.npy")
    check_rows(rows, scales, [it.item_id for it in changes.upsert], where)
    return changes, rows, scales
