"""wrk against ``shelfrank serve`` (its own process): recommend at 1, 8 and 32 keep-alive connections.

Bounded: ``SHELFRANK_WRK_SECONDS`` per level (default 3). Every request must be answered 2xx with
no socket error; the throughput and latency are printed (``python -m shelfrank.bench.serve``
writes the same figures as a report, see docs/serve.md).
"""

from __future__ import annotations

import os
import shutil

import pytest

from shelfrank.bench.serve import LEVELS, ServeProcess, get_json, run_wrk, seed_users

SECONDS = float(os.environ.get("SHELFRANK_WRK_SECONDS", "3"))


def test_wrk_recommend_load_has_no_errors(bundle_and_key, tmp_path, capsys):
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed: apt-get install wrk (scripts/setup.sh --system installs it)")
    bundle, pub = bundle_and_key
    with ServeProcess(bundle, pub, tmp_path / "state") as srv:
        seed_users(srv.host, srv.port)
        before = get_json(srv.host, srv.port, "/v1/status")["requests"]["by_status"]
        runs = [run_wrk(f"http://{srv.host}:{srv.port}", connections=c, seconds=SECONDS) for c in LEVELS]
        after = get_json(srv.host, srv.port, "/v1/status")["requests"]["by_status"]
        code, err = srv.stop()
    with capsys.disabled():
        print(f"\nwrk POST /v1/recommend, {SECONDS:g} s per level (tiny bundle):")
        for r in runs:
            print(
                f"  {r['connections']:>2} connections: {r['rps']:8.0f} req/s  p50 {r['p50_us'] / 1e3:7.2f} ms  "
                f"p99 {r['p99_us'] / 1e3:7.2f} ms  ({r['requests']} requests, {r['socket_errors']} socket errors, "
                f"{r['non_2xx']} non-2xx)"
            )
    for r in runs:
        assert r["requests"] > 0 and r["socket_errors"] == 0 and r["non_2xx"] == 0, r
    answered = {s: n - before.get(s, 0) for s, n in after.items() if n != before.get(s, 0)}
    # the server's own count: only 200s (and at least as many as wrk saw complete), never a 4xx/5xx
    assert set(answered) == {"200"} and answered["200"] >= sum(r["requests"] for r in runs), answered
    assert code == 0 and "Traceback" not in err, err
