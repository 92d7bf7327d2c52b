"""Today's stdlib transport against small server libraries, on the same endpoint (docs/serve.md).

``python scripts/bench_serve_transports.py [--seconds 3] [--rounds 3] [--site DIR] [--json OUT]``

Each transport serves the same :class:`~shelfrank.device.service.routes.HttpApi` over one opened
Recommender (the tiny test bundle) in its own process on 127.0.0.1; wrk posts ``/v1/recommend``
(k = 10, 64 seeded shoppers rotating) at 1, 8 and 32 keep-alive connections. Also measured: the
import time of the transport's stack on top of ``shelfrank.device`` (fresh processes, median of
5) and the server's resident memory (the process and its children) idle and after the load.

The libraries are not dependencies of shelfrank: install them into a folder of their own and pass
it with ``--site`` (``pip install --target DIR waitress cheroot uvicorn httptools h11 granian``);
one that does not import is skipped. Everything runs on this machine, so wrk and the server share
its cores: compare the rows with each other, not with a board.
"""

from __future__ import annotations

import argparse
import http
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()

#: transport -> the modules it imports on top of shelfrank.device (for the import-time column)
STACKS = {
    "stdlib (today)": "shelfrank.device.service.serve",
    "waitress": "shelfrank.device.service.routes, waitress",
    "cheroot": "shelfrank.device.service.routes, cheroot.wsgi",
    "uvicorn + h11": "shelfrank.device.service.routes, uvicorn, h11",
    "uvicorn + httptools": "shelfrank.device.service.routes, uvicorn, httptools",
    "granian (wsgi)": "shelfrank.device.service.routes, granian",
}

# ---- the child: one transport serving HttpApi ----------------------------------------------------


def _wsgi(api: Any):
    def app(environ: dict, start_response: Any) -> list[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        status, payload, headers = api.handle(method, path, environ.get("CONTENT_TYPE") or None, body)
        hdrs = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        start_response(f"{status} {http.HTTPStatus(status).phrase}", hdrs + list(headers.items()))
        return [payload]

    return app


def _asgi(api: Any):
    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        ctype = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-type"), None)
        # the recommender is synchronous: called on the loop (the best case for req/s)
        status, payload, headers = api.handle(scope["method"], scope["path"], ctype, body)
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        hdrs += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": payload})

    return app


def _open_api(bundle: str, pub: str, state: str) -> Any:
    from shelfrank.device import Recommender
    from shelfrank.device.service.endpoints import Service
    from shelfrank.device.service.routes import HttpApi

    rec = Recommender.open(bundle, public_key=pub or None, state_dir=state)
    return HttpApi(Service(rec))


def granian_app() -> Any:  # granian's worker imports this module by name and calls it
    return _wsgi(_open_api(*json.loads(os.environ["BENCH_TRANSPORT_ARGS"])))


def child(transport: str, port: int, bundle: str, pub: str, state: str) -> None:
    if transport == "granian (wsgi)":
        from granian import Granian

        os.environ["BENCH_TRANSPORT_ARGS"] = json.dumps([bundle, pub, state])
        sys.path.insert(0, str(HERE.parent))
        print(f"PORT {port}", flush=True)
        Granian(
            f"{HERE.stem}:granian_app", address="127.0.0.1", port=port, interface="wsgi", workers=1, factory=True
        ).serve()
        return
    api = _open_api(bundle, pub, state)
    if transport == "stdlib (today)":
        from shelfrank.device.service.serve import start

        servers = start(api, port=port)
        print(f"PORT {servers.tcp_address[1]}", flush=True)
        while True:
            time.sleep(3600)
    if transport == "waitress":
        import logging

        import waitress

        logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth is N", per request
        print(f"PORT {port}", flush=True)
        waitress.serve(_wsgi(api), host="127.0.0.1", port=port, threads=8, _quiet=True)
    elif transport == "cheroot":
        from cheroot import wsgi

        server = wsgi.Server(("127.0.0.1", port), _wsgi(api), numthreads=8)
        print(f"PORT {port}", flush=True)
        server.start()
    elif transport.startswith("uvicorn"):
        import uvicorn

        loop = "h11" if transport.endswith("h11") else "httptools"
        print(f"PORT {port}", flush=True)
        uvicorn.run(_asgi(api), host="127.0.0.1", port=port, http=loop, log_level="warning", access_log=False)


# ---- the parent: start each, seed, load, measure -------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants (granian runs a worker process)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def _import_ms(stack: str, env: dict, repeats: int = 5) -> float:
    code = f"import shelfrank.device, time; t = time.perf_counter(); import {stack}; print(time.perf_counter() - t)"
    runs = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout)
        for _ in range(repeats)
    ]
    return statistics.median(runs) * 1e3


def _wait_ready(host: str, port: int, timeout: float = 60.0) -> None:
    import http.client

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            c = http.client.HTTPConnection(host, port, timeout=5)
            c.request("GET", "/v1/health")
            if c.getresponse().status == 200:
                c.close()
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"no answer on {host}:{port} within {timeout:g} s")


def measure(transport: str, bundle: Path, pub: Path, work: Path, seconds: float, env: dict) -> dict[str, Any]:
    from shelfrank.bench.serve import LEVELS, run_wrk, seed_users

    port = _free_port()
    state = work / re.sub(r"\W+", "-", transport)
    cmd = [sys.executable, str(HERE), "--child", transport, str(port), str(bundle), str(pub), str(state)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.match(r"PORT (\d+)", line)
        if m is None:
            raise RuntimeError(f"{transport} did not start: {line!r}")
        port = int(m.group(1))
        _wait_ready("127.0.0.1", port)
        idle = _tree_rss_mib(proc.pid)
        seed_users("127.0.0.1", port)
        runs = [run_wrk(f"http://127.0.0.1:{port}", connections=c, seconds=seconds) for c in LEVELS]
        loaded = _tree_rss_mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {
        "transport": transport,
        "import_ms": _import_ms(STACKS[transport], env),
        "rss_idle_mib": idle,
        "rss_loaded_mib": loaded,
        "runs": [
            {
                "connections": r["connections"],
                "rps": r["rps"],
                "p50_ms": r["p50_us"] / 1e3,
                "p99_ms": r["p99_us"] / 1e3,
                "errors": r["socket_errors"] + r["non_2xx"],
                "raw": r,
            }
            for r in runs
        ],
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure of a transport as its median over the rounds."""
    med = statistics.median
    out = {k: med(r[k] for r in runs) for k in ("import_ms", "rss_idle_mib", "rss_loaded_mib")}
    out["transport"] = runs[0]["transport"]
    out["runs"] = [
        {k: med(r["runs"][i][k] for r in runs) for k in ("connections", "rps", "p50_ms", "p99_ms")}
        | {"errors": sum(r["runs"][i]["errors"] for r in runs)}
        for i in range(len(runs[0]["runs"]))
    ]
    return out


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return platform.processor() or "?"


def markdown(results: list[dict[str, Any]]) -> str:
    head = "| transport | import ms | RSS idle / loaded MiB |"
    head += "".join(f" {c} conn: req/s, p50 / p99 ms |" for c in (1, 8, 32))
    lines = [head, "|" + " --- |" * 6]
    for r in results:
        cells = [r["transport"], f"{r['import_ms']:.1f}", f"{r['rss_idle_mib']:.1f} / {r['rss_loaded_mib']:.1f}"]
        for run in r["runs"]:
            err = f" ({run['errors']} errors)" if run["errors"] else ""
            cells.append(f"{run['rps']:.0f}, {run['p50_ms']:.2f} / {run['p99_ms']:.2f}{err}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="wrk duration per level (default 3)")
    p.add_argument("--site", type=Path, help="folder the libraries were pip-installed into (--target)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each cell is their median (default 3)")
    p.add_argument("--only", nargs="*", help="transports to run (default: all)")
    p.add_argument("--json", type=Path, metavar="OUT")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        transport, port, *rest = args.child
        child(transport, int(port), *rest)
        return 0
    env = dict(os.environ)
    if args.site:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(args.site), env.get("PYTHONPATH"))))
    from shelfrank.testing import build_device_bundle

    rounds: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-transports-") as tmp:
        work = Path(tmp)
        bundle, pub = build_device_bundle(work / "b", n_items=300, dim=16)
        todo = []
        for transport, stack in STACKS.items():
            if args.only and transport not in args.only:
                continue
            mod = stack.split(", ")[-1]
            ok = subprocess.run([sys.executable, "-c", f"import {mod}"], capture_output=True, env=env).returncode == 0
            if ok:
                todo.append(transport)
            else:
                print(f"[transports] {transport}: {mod} does not import; skipped", file=sys.stderr)
        for r in range(args.rounds):  # interleaved: a burst of load elsewhere hits every transport alike
            for transport in todo:
                print(f"[transports] round {r + 1}/{args.rounds}: {transport}", file=sys.stderr, flush=True)
                try:
                    rounds.setdefault(transport, []).append(
                        measure(transport, bundle, pub, work / f"r{r}", args.seconds, env)
                    )
                except Exception as e:  # one transport that fails to serve does not end the comparison
                    print(f"[transports] {transport}: {e}", file=sys.stderr)
    results = [_median(runs) for runs in rounds.values()]
    load = os.getloadavg()[0]
    print(
        f"CPU: {_cpu()}; Python {platform.python_version()}; wrk {args.seconds:g} s per level, tiny bundle; "
        f"median of {args.rounds} interleaved rounds; load average at the end {load:.1f}\n"
    )
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps({"cpu": _cpu(), "results": results, "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
