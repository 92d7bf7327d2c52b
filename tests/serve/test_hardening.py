"""The service against a hostile client on the same machine (issue 13): findings 5, 8, 9, 10 and
the request-body contract. Real sockets on 127.0.0.1; deadlines and caps set short by the tests."""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import threading
import time

import pytest

from shelfrank.device.encoder import CHARS_PER_TOKEN
from shelfrank.device.service.endpoints import Service
from shelfrank.device.service.serve import SEARCH_BODY, start

from ._http import raw_exchange, read_until_close
from .conftest import Client

WORDS = "wireless noise cancelling headphones with a long battery life and a soft case".split()


def _long_text(n_chars: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n_chars // 4))[:n_chars]


class _SpyTokenizer:
    """Wraps the encoder's tokenizer and records the longest text it was given."""

    def __init__(self, inner) -> None:
        self.inner, self.longest = inner, 0

    def encode_batch(self, texts):
        self.longest = max(self.longest, *(len(t) for t in texts))
        return self.inner.encode_batch(texts)


# ---- finding 5: a huge search is cut before tokenizing, and refused over the endpoint's limit -------


def test_a_huge_search_costs_bounded_time_and_the_tokenizer_reads_a_bounded_prefix(rec):
    enc = rec.encoder
    spy = _SpyTokenizer(enc.tokenizer)
    enc.tokenizer = spy
    try:
        text = _long_text(800_000)
        started = time.perf_counter()
        items = rec.search(text, 5)
        elapsed = time.perf_counter() - started
    finally:
        enc.tokenizer = spy.inner
    assert len(items) == 5
    assert spy.longest <= enc.max_len * CHARS_PER_TOKEN
    assert elapsed < 0.5, elapsed  # tokenized whole, 800 KB took 0.55 s and +82 MB even on this tiny bundle


def test_the_cut_keeps_every_token_the_model_sees(rec):
    enc = rec.encoder
    text = _long_text(50 * enc.max_len * CHARS_PER_TOKEN)
    whole = enc.tokenizer.encode(text).ids  # the tokenizer's own truncation at max_len
    cut = enc.tokenize([text])["input_ids"][0].tolist()
    assert cut == whole and len(cut) == enc.max_len


def test_an_800_kb_search_body_is_refused_with_413_and_the_connection_goes_on(client):
    body = json.dumps({"text": _long_text(800_000)}).encode()
    status, doc, _ = client.call("POST", "/v1/search", raw=body, headers={"Content-Type": "application/json"})
    assert (status, doc["error"]) == (413, "payload_too_large"), doc
    assert f"limit for POST /v1/search is {SEARCH_BODY}" in doc["message"]
    assert client.call("GET", "/v1/health")[0] == 200
    # under the limit, a long text is answered (and cut by the encoder)
    status, doc = client.post("/v1/search", {"text": _long_text(SEARCH_BODY - 100), "k": 3})
    assert status == 200 and len(doc["items"]) == 3


@pytest.mark.parametrize(("path", "limit"), [("/v1/record", 16 << 10), ("/v1/history", 16 << 10)])
def test_small_operations_take_small_bodies(client, path, limit):
    body = json.dumps({"user_id": "u" * (limit + 10)}).encode()
    status, doc, _ = client.call("POST", path, raw=body, headers={"Content-Type": "application/json"})
    assert (status, doc["error"]) == (413, "payload_too_large") and str(limit) in doc["message"]


# ---- finding 8: a Content-Length of non-ASCII digits --------------------------------------------


@pytest.mark.parametrize("value", ["²", "١٢", "1²", "٣", " 12³ "])
@pytest.mark.parametrize("expect", [False, True])
def test_non_ascii_digits_in_content_length_are_a_400_not_a_dead_handler(served, caplog, value, expect):
    head = b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if expect:
        head += b"Expect: 100-continue\r\n"
    request = head + b"Content-Length: " + value.encode("utf-8") + b"\r\n\r\n{}"
    with caplog.at_level(logging.ERROR, logger="shelfrank.device.service.serve"):
        out = raw_exchange(served[1].tcp_address, request)
    head_out, _, body = out.partition(b"\r\n\r\n")
    assert head_out.startswith(b"HTTP/1.1 400 "), out[:200]
    assert b"100 Continue" not in out and json.loads(body)["error"] == "bad_request"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no handler died
    c = Client(tcp=served[1].tcp_address)
    assert c.call("GET", "/v1/health")[0] == 200
    c.close()


# ---- finding 10: slow clients and too many connections ---------------------------------------------


@pytest.fixture()
def strict_server(rec):
    """A server with a 1 s request deadline, a 3 s idle timeout and at most 2 connections."""
    service = Service(rec)
    servers = start(service, port=0, request_deadline=1.0, idle_timeout=3.0, max_connections=2)
    yield service, servers
    servers.close(timeout=5)


def _active(servers) -> int:
    (tcp,) = servers._servers
    return tcp._active


def test_a_client_dripping_one_byte_at_a_time_gets_408_at_the_deadline(strict_server):
    _, servers = strict_server
    request = b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    with socket.create_connection(servers.tcp_address, timeout=10) as s:
        started = time.monotonic()
        got = b""
        s.settimeout(0.25)  # one byte every 0.25 s: each read is far inside the 3 s idle timeout
        for byte in request:
            try:
                s.sendall(bytes([byte]))
            except OSError:  # the server already answered and closed
                break
            try:
                got += s.recv(65536)
                if got:
                    break
            except TimeoutError:
                pass
        got += read_until_close(s)
        elapsed = time.monotonic() - started
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), got[:200]
    assert b"Connection: close" in head and json.loads(body)["error"] == "request_timeout"
    assert 0.9 <= elapsed < 2.5, elapsed  # at the 1 s deadline, not after the whole drip (~27 s)
    deadline = time.monotonic() + 3
    while _active(servers) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _active(servers) == 0  # the thread is free again


def test_a_silent_connection_is_closed_after_the_idle_timeout(strict_server):
    _, servers = strict_server
    with socket.create_connection(servers.tcp_address, timeout=10) as s:
        started = time.monotonic()
        assert read_until_close(s) == b""  # closed, nothing to answer
        assert 2.5 < time.monotonic() - started < 5


def test_a_request_sent_quickly_over_a_slow_link_is_answered(strict_server, rec):
    _, servers = strict_server
    body = json.dumps({"user_id": "u", "k": 2}).encode()
    request = (
        b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    with socket.create_connection(servers.tcp_address, timeout=10) as s:
        for i in range(0, len(request), 16):  # a few pieces, well inside the deadline
            s.sendall(request[i : i + 16])
            time.sleep(0.02)
        out = read_until_close(s)
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]


def test_connections_beyond_the_cap_get_503_and_the_cap_frees_up(strict_server):
    _, servers = strict_server
    held = [Client(tcp=servers.tcp_address) for _ in range(2)]
    try:
        for c in held:  # answered, and kept alive: each holds a thread
            assert c.call("GET", "/v1/health")[0] == 200
        with socket.create_connection(servers.tcp_address, timeout=10) as s:
            out = read_until_close(s)
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), out[:200]
        assert b"Retry-After: 1" in head and b"Connection: close" in head
        doc = json.loads(body)
        assert doc["error"] == "unavailable" and "2 open connections" in doc["message"]
        for c in held:  # the connections being served are not disturbed
            assert c.call("GET", "/v1/health")[0] == 200
    finally:
        for c in held:
            c.close()
    deadline = time.monotonic() + 5
    while _active(servers) and time.monotonic() < deadline:
        time.sleep(0.02)
    c = Client(tcp=servers.tcp_address)
    assert c.call("GET", "/v1/health")[0] == 200
    c.close()


def test_many_slow_clients_cannot_exhaust_the_server(strict_server):
    """A flood of slow connections: at most the cap hold a thread, each for at most the deadline."""
    _, servers = strict_server
    socks = [socket.create_connection(servers.tcp_address, timeout=10) for _ in range(12)]
    try:
        for s in socks:
            s.sendall(b"POST /v1/recommend HTTP/1.1\r\n")  # and then nothing more
        statuses = []
        for s in socks:
            out = read_until_close(s)
            statuses.append(out[9:12])
        assert statuses.count(b"503") >= 10 and set(statuses) <= {b"503", b"408"}, statuses
        assert threading.active_count() < 40
    finally:
        for s in socks:
            s.close()


# ---- finding 9 through the service: forget while another reader is open ---------------------------


def test_forget_while_a_reader_pins_the_wal_is_a_503_to_retry(client, rec):
    rec.events.checkpoint_timeout = 0.2
    item = rec.catalog.item_ids[0]
    assert client.post("/v1/record", {"user_id": "u-pinned", "item_id": item, "action": "view"})[0] == 200
    reader = sqlite3.connect(rec.events.path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM events").fetchone()
        status, doc, headers = client.call("POST", "/v1/forget", {"user_id": "u-pinned"})
        assert (status, doc["error"], headers["Retry-After"]) == (503, "unavailable", "1"), doc
        assert "events.sqlite-wal" in doc["message"]
        assert client.post("/v1/history", {"user_id": "u-pinned"}) == (200, {"user_id": "u-pinned", "events": []})
        reader.execute("ROLLBACK")
    finally:
        reader.close()
    assert client.post("/v1/forget", {"user_id": "u-pinned"}) == (200, {"user_id": "u-pinned", "forgotten": True})


# ---- the contract: unknown fields, one decode, the description from the same types -----------------


def test_unknown_fields_are_refused_naming_the_field_at_any_depth(client):
    status, doc = client.post("/v1/search", {"text": "x", "where": {"max_prize": 3}})
    assert (status, doc["field"]) == (422, "where.max_prize")
    assert doc["message"].startswith("where.max_prize is not a known field; allowed in where: category, brand")


def test_the_openapi_description_is_the_decoders_schema():
    from shelfrank.device import formats
    from shelfrank.device.service.serve import openapi_spec

    spec = openapi_spec()
    assert spec["openapi"].startswith("3.1")
    assert spec["components"]["schemas"] == formats.service_schemas()
    for name in ("RecordRequest", "RecommendRequest", "SimilarRequest", "SearchRequest", "UserRequest", "Where"):
        assert spec["components"]["schemas"][name]["additionalProperties"] is False, name


def test_a_deeply_nested_body_is_a_4xx(served):
    body = b'{"user_id": "u", "where": {"category": ' + b"[" * 200_000 + b"]" * 200_000 + b"}}"
    request = (
        b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    out = raw_exchange(served[1].tcp_address, request)
    assert out.startswith(b"HTTP/1.1 422 "), out[:200]
