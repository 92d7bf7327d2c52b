"""Many clients at once while another process syncs a new catalog into the state folder."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter

from shelfrank.device import Recommender
from shelfrank.device.service.endpoints import Service
from shelfrank.device.service.serve import start

from .conftest import Client, cli_env


def test_clients_keep_being_served_while_another_process_syncs(published, tmp_path):
    state = tmp_path / "state"
    rec = Recommender.open(published["bundle"], public_key=published["pub"], state_dir=state)
    service = Service(rec, refresh_interval=0.2)
    servers = start(service, port=0)
    ids = list(rec.catalog.item_ids)
    stop = threading.Event()
    statuses: Counter[int] = Counter()
    versions: list[list[int]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client_loop(n: int) -> None:
        c = Client(tcp=servers.tcp_address)
        seen: list[int] = []
        i = 0
        try:
            while not stop.is_set():
                i += 1
                user = f"u{n}-{i % 5}"
                kind = i % 4
                if kind == 0:
                    status, doc = c.post(
                        "/v1/record", {"user_id": user, "item_id": ids[i % len(ids)], "action": "click"}
                    )
                elif kind == 1:
                    status, doc = c.post("/v1/recommend", {"user_id": user, "k": 5})
                elif kind == 2:
                    status, doc = c.post("/v1/similar", {"item_id": ids[(i * 7) % len(ids)], "k": 5})
                else:
                    status, doc = c.post("/v1/search", {"text": "espresso grinder", "k": 5})
                with lock:
                    statuses[status] += 1
                if status != 200:
                    failures.append(f"{status} {doc}")
                elif "catalog_version" in doc:
                    seen.append(doc["catalog_version"])
        except Exception as e:  # a dropped connection is a failure too
            failures.append(repr(e))
        finally:
            c.close()
            with lock:
                versions.append(seen)

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        # the board's timer runs `shelfrank sync` as its own process against the same state folder
        sync = subprocess.run(
            [sys.executable, "-m", "shelfrank.cli", "sync", str(published["bundle"]), str(published["dir"]),
             "--public-key", str(published["pub"]), "--state", str(state)],
            capture_output=True, text=True, timeout=120, env=cli_env(),
        )  # fmt: skip
        assert sync.returncode == 0, sync.stderr
        assert "catalog 1 → 2" in sync.stdout
        status_client = Client(tcp=servers.tcp_address)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, doc, _ = status_client.call("GET", "/v1/status")
            if doc["catalog"]["version"] == 2:
                break
            time.sleep(0.1)
        time.sleep(0.5)  # more load on the new catalog
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    try:
        assert not failures, failures[:5]
        assert set(statuses) == {200} and sum(statuses.values()) > 50, statuses
        assert doc["catalog"] == {"version": 2, "items": len(ids) + 1, "bundle_version": 1, "source": "synced"}
        for seen in versions:  # each client saw version 1, then 2, never back
            assert seen == sorted(seen), seen
        assert any(1 in seen for seen in versions) and any(2 in seen for seen in versions)
        status, doc = status_client.post("/v1/similar", {"item_id": "NEW-1", "k": 3})
        assert status == 200 and doc["catalog_version"] == 2
        status, doc = status_client.post(
            "/v1/search", {"text": "Aurora Quantum Espresso Grinder [SEP] Kitchen [SEP] Aurora"}
        )
        assert status == 200 and doc["items"][0]["item_id"] == "NEW-1"
        status_client.close()
    finally:
        servers.close()
        rec.close()
