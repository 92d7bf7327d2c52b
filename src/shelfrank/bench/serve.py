"""Figures for ``shelfrank serve``: wrk load on ``POST /v1/recommend`` and the service's footprint.

``python -m shelfrank.bench.serve [--bundle DIR --public-key PUB] [--seconds 5] [--format md|json|csv]
[--md OUT] [--json OUT] [--csv OUT]``

- Load: ``shelfrank serve`` runs as its own process on 127.0.0.1:0; 64 shoppers get 4 events
  each; then wrk (Debian package ``wrk``) posts recommend requests (k = 10, shoppers rotating)
  over keep-alive connections at 1, 8 and 32 connections for ``--seconds`` each, and reports
  throughput, p50/p99 latency and every error (socket errors, non-2xx answers).
- Footprint: in fresh processes, the import time of ``shelfrank.device`` against
  ``shelfrank.device.service.serve`` (median of 5), and the resident memory of the plain library
  (open + the same calls in-process) against the service answering them over HTTP.

Without ``--bundle`` it builds the tiny test bundle (needs ``onnx``, from the dev extra). The load
generator shares the machine with the server: on a 2-core machine the figures are a floor.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from shelfrank.bench.record import PRINTERS, Record, Table, col, emit
from shelfrank.errors import ShelfrankError

LEVELS = (1, 8, 32)

# POST /v1/recommend, rotating over shoppers u0 … u{users-1}; done() prints one JSON line.
WRK_LUA = r"""
local users = tonumber(os.getenv("SHELFRANK_WRK_USERS")) or 64
local k = tonumber(os.getenv("SHELFRANK_WRK_K")) or 10
local headers = {["Content-Type"] = "application/json"}
local thread_no = 0

function setup(thread)
  thread:set("offset", thread_no * 17)
  thread_no = thread_no + 1
end

local n = 0
function request()
  n = n + 1
  local body = string.format('{"user_id":"u%d","k":%d}', (n + (offset or 0)) % users, k)
  return wrk.format("POST", "/v1/recommend", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise ShelfrankError("wrk is not installed: apt-get install wrk (scripts/setup.sh --system installs it)")
    return path


def run_wrk(
    base_url: str, *, connections: int, seconds: float, users: int = 64, k: int = 10, threads: int | None = None
) -> dict[str, Any]:
    """One wrk run of recommend at ``connections`` keep-alive connections; its counts and latency."""
    threads = threads or min(connections, 2)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "recommend.lua"
        script.write_text(WRK_LUA)
        env = {**os.environ, "SHELFRANK_WRK_USERS": str(users), "SHELFRANK_WRK_K": str(k)}
        cmd = [
            wrk_binary(),
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            base_url,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, env=env)
    m = re.search(r"^WRK_JSON (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or m is None:
        raise ShelfrankError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    doc = json.loads(m.group(1))
    doc["connections"], doc["threads"] = connections, threads
    doc["rps"] = doc["requests"] / (doc["duration_us"] / 1e6)
    doc["socket_errors"] = doc["connect"] + doc["read"] + doc["write"] + doc["timeout"]
    doc["non_2xx"] = doc["status"]
    return doc


def _post(conn: http.client.HTTPConnection, path: str, body: dict) -> dict:
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    doc = json.loads(r.read())
    if r.status != 200:
        raise ShelfrankError(f"POST {path} {body}: {r.status} {doc}")
    return doc


def seed_users(host: str, port: int, *, users: int = 64, events: int = 4) -> None:
    """Give shoppers u0 … u{users-1} a short history each (so recommend runs the user tower)."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        ids = [it["item_id"] for it in _post(conn, "/v1/recommend", {"user_id": "seed", "k": 200})["items"]]
        actions = ("view", "click", "cart", "purchase")
        for u in range(users):
            for e in range(events):
                item = ids[(u * 7 + e * 13) % len(ids)]
                _post(conn, "/v1/record", {"user_id": f"u{u}", "item_id": item, "action": actions[e % 4]})
    finally:
        conn.close()


def get_json(host: str, port: int, path: str) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


class ServeProcess:
    """``python -m shelfrank.cli serve BUNDLE --port 0`` as a child; ``.host``, ``.port``, ``.pid``."""

    def __init__(self, bundle: Path, public_key: Path | None, state_dir: Path, *extra: str) -> None:
        args = [sys.executable, "-m", "shelfrank.cli", "serve", str(bundle), "--port", "0"]
        args += ["--state-dir", str(state_dir), *extra]
        if public_key is not None:
            args += ["--public-key", str(public_key)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        m = re.search(r"http://([\d.]+):(\d+)", line)
        if m is None:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=30)
            raise ShelfrankError(f"shelfrank serve did not start: {line} {err[-2000:]}")
        self.host, self.port, self.pid = m.group(1), int(m.group(2)), self.proc.pid

    def stop(self) -> tuple[int, str]:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.stop()


def _proc_memory(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM of a process in MiB (Linux)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


_IMPORT = """
import json, time
t0 = time.perf_counter()
import {module}
print(json.dumps({{"ms": (time.perf_counter() - t0) * 1e3}}))
"""

_LIBRARY = """
import json, sys, time
t0 = time.perf_counter()
from shelfrank.device import Recommender
t1 = time.perf_counter()
rec = Recommender.open(sys.argv[1], public_key=sys.argv[2] or None, state_dir=sys.argv[3])
t2 = time.perf_counter()
ids = [it.item_id for it in rec.recommend("seed", k=50)]
for u in range(64):
    rec.record(f"u{u}", ids[u % len(ids)], "view")
for i in range(2000):
    rec.recommend(f"u{i % 64}", k=10)
rec.similar(ids[0], k=10); rec.search("wireless headphones", k=10)
mem = {}
for line in open("/proc/self/status"):
    key, _, value = line.partition(":")
    if key in ("VmRSS", "VmHWM"):
        mem[key] = int(value.split()[0]) / 1024
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "open_ms": (t2 - t1) * 1e3, **mem}))
"""


def footprint(bundle: Path, public_key: Path | None, work: Path, repeats: int = 7) -> dict[str, Any]:
    """Import time (fresh processes, the three imports interleaved ``repeats`` times; best and median)
    and resident memory: the library against the service."""
    modules = {
        "device": "shelfrank.device",
        "serve": "shelfrank.device.service.serve",
        "cli_serve": "shelfrank.cli, shelfrank.device.service.serve",
    }
    runs: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(repeats):
        for name, module in modules.items():
            out = subprocess.run(
                [sys.executable, "-c", _IMPORT.format(module=module)], capture_output=True, text=True, check=True
            )
            runs[name].append(json.loads(out.stdout)["ms"])
    res: dict[str, Any] = {
        f"import_{name}_ms": {"best": min(v), "median": statistics.median(v)} for name, v in runs.items()
    }
    out = subprocess.run(
        [sys.executable, "-c", _LIBRARY, str(bundle), str(public_key or ""), str(work / "state-lib")],
        capture_output=True,
        text=True,
        check=True,
    )
    res["library"] = json.loads(out.stdout)
    with ServeProcess(bundle, public_key, work / "state-serve") as srv:
        idle = _proc_memory(srv.pid)
        seed_users(srv.host, srv.port, users=64, events=1)
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
        try:
            ids = [it["item_id"] for it in _post(conn, "/v1/recommend", {"user_id": "seed", "k": 50})["items"]]
            for i in range(2000):
                _post(conn, "/v1/recommend", {"user_id": f"u{i % 64}", "k": 10})
            _post(conn, "/v1/similar", {"item_id": ids[0], "k": 10})
            _post(conn, "/v1/search", {"text": "wireless headphones", "k": 10})
        finally:
            conn.close()
        res["serve"] = {"idle": idle, **_proc_memory(srv.pid)}
    return res


def load(
    bundle: Path, public_key: Path | None, work: Path, *, seconds: float, levels=LEVELS, progress=None
) -> dict[str, Any]:
    """wrk at each of ``levels`` connections against one ``shelfrank serve``, warm from the seeding."""
    with ServeProcess(bundle, public_key, work / "state-load") as srv:
        seed_users(srv.host, srv.port)
        before = get_json(srv.host, srv.port, "/v1/status")["requests"]["by_status"]
        runs = []
        for c in levels:  # one level after the other, the server warm from the seeding
            if progress is not None:
                progress(f"wrk: {c} connection(s), {seconds:g} s")
            runs.append(run_wrk(f"http://{srv.host}:{srv.port}", connections=c, seconds=seconds))
        after = get_json(srv.host, srv.port, "/v1/status")
        rss = _proc_memory(srv.pid)
    new = {s: n - before.get(s, 0) for s, n in after["requests"]["by_status"].items() if n - before.get(s, 0)}
    return {"runs": runs, "server_answers": new, "server_rss_mib": rss, "isa": after["isa"]}


def _wrk_version() -> str:
    out = subprocess.run([wrk_binary(), "--version"], capture_output=True, text=True)
    m = re.search(r"(\d+\.\d+\.\d+)", out.stdout + out.stderr)
    return m.group(1) if m else "?"


def system_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load1 = os.getloadavg()[0]
    return (
        f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"wrk {_wrk_version()}, load average {load1:.1f} at the start"
    )


@dataclass(kw_only=True)
class WrkRow:
    connections: int = col("connections")
    threads: int = col("wrk threads")
    requests: int = col("requests", ",")
    rps: float = col("req/s", ",.0f")
    p50_ms: float = col("p50 ms", ".2f")
    p90_ms: float = col("p90 ms", ".2f")
    p99_ms: float = col("p99 ms", ".2f")
    max_ms: float = col("max ms", ".1f")
    socket_errors: int = col("socket errors")
    non_2xx: int = col("non-2xx")


@dataclass(kw_only=True)
class FootprintRow:
    what: str = col("", align="l")
    import_best_ms: float = col("import ms, best", ".0f")
    import_median_ms: float = col("import ms, median", ".0f")
    rss_mib: float | None = col("RSS MiB after the calls", ".1f", default=None)
    peak_rss_mib: float | None = col("peak RSS MiB", ".1f", default=None)


@dataclass(kw_only=True)
class ServeRecord(Record):
    """What ``python -m shelfrank.bench.serve`` measured (the JSON report, field by field)."""

    bundle: str
    items: int
    dim: int
    system: str
    seconds: float
    load: dict[str, Any]
    isa: str
    footprint: dict[str, Any] | None = None
    title: ClassVar[str] = "shelfrank bench serve"

    def document(self) -> dict[str, Any]:
        doc = super().document()
        return {k: v for k, v in doc.items() if v is not None or k != "footprint"}

    def system_facts(self) -> dict[str, Any]:
        return {"machine": self.system, "isa": self.isa}

    def facts(self) -> list[tuple[str, str]]:
        out = [
            ("bundle", f"{self.bundle} ({self.items} items, d = {self.dim}); kernel ISA {self.isa}"),
            ("machine", self.system),
            ("load", f"wrk POST /v1/recommend, {self.seconds:g} s per level, keep-alive connections"),
            ("server answers during the load runs (/v1/status)", str(self.load["server_answers"])),
        ]
        fp = self.footprint
        if fp:
            lib, srv = fp["library"], fp["serve"]
            out.append(
                (
                    "service",
                    f"`shelfrank.cli` plus the service import in {_ms(fp['import_cli_serve_ms'])} ms (best / median); "
                    f"{srv['idle']['VmRSS']:.1f} MiB before its first request. The library opened the bundle in "
                    f"{lib['open_ms']:.0f} ms.",
                )
            )
        return out

    def tables(self) -> list[Table]:
        runs = [
            WrkRow(
                connections=r["connections"],
                threads=r["threads"],
                requests=r["requests"],
                rps=r["rps"],
                p50_ms=r["p50_us"] / 1e3,
                p90_ms=r["p90_us"] / 1e3,
                p99_ms=r["p99_us"] / 1e3,
                max_ms=r["max_us"] / 1e3,
                socket_errors=r["socket_errors"],
                non_2xx=r["non_2xx"],
            )
            for r in self.load["runs"]
        ]
        foot = []
        if self.footprint:
            fp = self.footprint
            lib, srv = fp["library"], fp["serve"]
            for what, key, mem in (
                ("library: `import shelfrank.device`, open, calls in-process", "import_device_ms", lib),
                ("service: `import shelfrank.device.service.serve`, the same calls over HTTP", "import_serve_ms", srv),
            ):
                foot.append(
                    FootprintRow(
                        what=what,
                        import_best_ms=fp[key]["best"],
                        import_median_ms=fp[key]["median"],
                        rss_mib=mem.get("VmRSS"),
                        peak_rss_mib=mem.get("VmHWM"),
                    )
                )
        return [
            Table("load", "wrk load on POST /v1/recommend", runs, row_type=WrkRow),
            Table(
                "footprint",
                "Import time and resident memory: the library against the service",
                foot,
                "Import: fresh processes, interleaved, best and median of 7.",
                FootprintRow,
            ),
        ]


def _ms(t: dict[str, float]) -> str:
    return f"{t['best']:.0f} / {t['median']:.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shelfrank.bench.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, help="bundle to serve (default: build the tiny test bundle)")
    p.add_argument("--public-key", type=Path, help="its publisher key")
    p.add_argument("--items", type=int, default=300, help="tiny bundle: items (default 300)")
    p.add_argument("--dim", type=int, default=16, help="tiny bundle: dimension (default 16)")
    p.add_argument("--seconds", type=float, default=5.0, help="wrk duration per level (default 5)")
    p.add_argument("--no-footprint", action="store_true", help="only the load runs")
    p.add_argument("--json", type=Path, metavar="OUT")
    p.add_argument("--md", type=Path, metavar="OUT")
    p.add_argument("--csv", type=Path, metavar="OUT")
    p.add_argument("--format", choices=tuple(PRINTERS), default="md", help="what to print on stdout (default md)")
    args = p.parse_args(argv)
    wrk_binary()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        bundle, pub = args.bundle, args.public_key
        if bundle is None:
            from shelfrank.testing import build_device_bundle

            bundle, pub = build_device_bundle(work / "b", n_items=args.items, dim=args.dim)
        manifest = json.loads((bundle / "manifest.json").read_text())
        report: dict[str, Any] = {
            "bundle": str(args.bundle)
            if args.bundle
            else "synthetic test bundle (shelfrank.testing: tiny encoder and tower)",
            "items": manifest["catalog"]["count"],
            "dim": manifest["model"]["dim"],
            "system": system_line(),
            "seconds": args.seconds,
        }
        report["load"] = load(bundle, pub, work, seconds=args.seconds, progress=_progress)
        report["isa"] = report["load"]["isa"]
        if not args.no_footprint:
            _progress("footprint: import times and resident memory in fresh processes")
            report["footprint"] = footprint(bundle, pub, work)
    emit(ServeRecord(**report), args, _progress)
    return 0


def _progress(msg: str) -> None:
    print(f"[bench serve] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ShelfrankError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
