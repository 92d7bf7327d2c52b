"""What changes the kernel bench's numbers besides the code: BLAS and OpenMP thread pools (pinned
here), the faiss and threadpoolctl versions, environment variables, the load average.

faiss and threadpoolctl are optional; without them their rows are skipped or the pins say so.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

ENV_VARS = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "SHELFRANK_FORCE_ISA",
    "SHELFRANK_DATA",
)


@contextmanager
def _quiet() -> Iterator[None]:
    # faiss (SWIG) and threadpoolctl may emit Deprecation/Runtime warnings that pytest -W error
    # would turn into failures; they say nothing about the figures.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _import_faiss() -> Any:
    try:
        with _quiet():
            import faiss
    except ImportError:
        return None
    return faiss


def _threadpoolctl() -> Any:
    try:
        with _quiet():
            import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl


class ThreadPins:
    """Pins numpy's BLAS (threadpoolctl) and faiss's OpenMP pool to one thread count."""

    def __init__(self, faiss: Any) -> None:
        self.faiss = faiss
        self.tpc = _threadpoolctl()
        self._limiter: Any = None

    def set(self, threads: int) -> None:
        if self.faiss is not None:
            self.faiss.omp_set_num_threads(int(threads))
        if self.tpc is not None:
            with _quiet():
                if self._limiter is not None:
                    self._limiter.restore_original_limits()
                self._limiter = self.tpc.threadpool_limits(limits=int(threads))

    def restore(self) -> None:
        if self._limiter is not None:
            with _quiet():
                self._limiter.restore_original_limits()
            self._limiter = None


def environment_info(faiss: Any) -> dict[str, Any]:
    """BLAS, threadpool, faiss and environment-variable facts that change the numbers."""
    env: dict[str, Any] = {"env": {v: os.environ.get(v) for v in ENV_VARS}}
    blas: dict[str, Any] = {}
    try:
        with _quiet():
            cfg = np.show_config(mode="dicts")  # numpy >= 1.25
        b = cfg.get("Build Dependencies", {}).get("blas", {})
        blas = {"name": b.get("name"), "version": b.get("version"), "config": b.get("openblas configuration")}
    except Exception as e:  # older numpy: no dict mode
        blas = {"name": "unknown", "error": str(e)}
    env["numpy_blas"] = blas
    tpc = _threadpoolctl()
    env["threadpoolctl"] = getattr(tpc, "__version__", "installed") if tpc is not None else None
    if tpc is not None:
        with _quiet():
            pools = tpc.threadpool_info()
        env["threadpools"] = [
            {
                k: p.get(k)
                for k in (
                    "user_api",
                    "internal_api",
                    "prefix",
                    "version",
                    "architecture",
                    "threading_layer",
                    "num_threads",
                    "filepath",
                )
            }
            for p in pools
        ]
    env["faiss"] = getattr(faiss, "__version__", "installed") if faiss is not None else None
    return env


def _loadavg() -> list[float] | None:
    # Other processes on a small machine move these figures; the load average says whether they ran.
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
