"""Every endpoint over a real loopback connection (TCP and Unix socket): answers and refusals."""

from __future__ import annotations

import json
import logging
import socket

import pytest

from shelfrank.device.service.serve import MAX_BODY, MAX_K, openapi_spec

from ._http import raw_exchange
from .conftest import Client

# ---- happy paths --------------------------------------------------------------------------------


def test_record_then_history_recommend_and_forget(client, rec):
    ids = rec.catalog.item_ids
    for item, action in ((ids[0], "view"), (ids[1], "cart"), (ids[2], "purchase")):
        status, doc = client.post("/v1/record", {"user_id": "u42", "item_id": item, "action": action})
        assert status == 200 and doc["item_id"] == item and doc["action"] == action and doc["ts"] > 1e9
    status, doc = client.post("/v1/record", {"user_id": "u42", "item_id": ids[3], "action": "click", "ts": 1234.5})
    assert status == 200 and doc["ts"] == 1234.5

    status, doc = client.post("/v1/history", {"user_id": "u42"})
    assert status == 200 and [e["item_id"] for e in doc["events"]] == ids[:4]
    assert [e["action"] for e in doc["events"]] == ["view", "cart", "purchase", "click"]

    status, doc = client.post("/v1/recommend", {"user_id": "u42", "k": 5})
    assert status == 200 and doc["catalog_version"] == rec.catalog.version and len(doc["items"]) == 5
    got = [it["item_id"] for it in doc["items"]]
    assert not set(got) & set(ids[:4])  # exclude_seen defaults to true
    assert got == [it.item_id for it in rec.recommend("u42", k=5)]  # the library's answer, as JSON
    assert set(doc["items"][0]) == {
        *("item_id", "score", "title", "category", "brand", "price", "in_stock"),
        *("score_kind", "reason", "reason_items", "reason_text"),
    }
    scores = [it["score"] for it in doc["items"]]
    assert scores == sorted(scores, reverse=True)

    status, doc = client.post("/v1/recommend", {"user_id": "u42", "k": 300, "exclude_seen": False})
    assert status == 200 and set(ids[:4]) <= {it["item_id"] for it in doc["items"]}

    status, doc = client.post("/v1/forget", {"user_id": "u42"})
    assert (status, doc) == (200, {"user_id": "u42", "forgotten": True})
    assert client.post("/v1/history", {"user_id": "u42"}) == (200, {"user_id": "u42", "events": []})
    assert rec.history("u42") == []


def test_recommend_where_filters(client, rec):
    cat = rec.catalog
    category = next(c for c in (cat.item(r).category for r in range(len(cat))) if c)
    where = {"category": category, "max_price": 50, "in_stock": True}
    status, doc = client.post("/v1/recommend", {"user_id": "nobody", "k": 20, "where": where})
    assert status == 200 and doc["items"]
    for it in doc["items"]:
        assert it["category"] == category and it["price"] <= 50 and it["in_stock"] is True
    allow = cat.item_ids[10:13]
    status, doc = client.post(
        "/v1/recommend", {"user_id": "nobody", "k": 10, "where": {"allow_ids": allow, "deny_ids": [allow[0]]}}
    )
    assert status == 200 and sorted(it["item_id"] for it in doc["items"]) == sorted(allow[1:])
    # a brand the catalog lacks is refused naming the field, as the library does (issue 15, defect 9)
    status, doc = client.post("/v1/recommend", {"user_id": "nobody", "where": {"brand": ["no such brand"]}})
    assert (status, doc["error"], doc["field"]) == (404, "unknown_filter_value", "where.brand")
    assert "'no such brand' is not in catalog version" in doc["message"]


def test_similar_and_search(client, rec):
    item = rec.catalog.item(7)
    status, doc = client.post("/v1/similar", {"item_id": item.item_id, "k": 4})
    assert status == 200 and doc["item_id"] == item.item_id and len(doc["items"]) == 4
    assert item.item_id not in [it["item_id"] for it in doc["items"]]
    assert [it["item_id"] for it in doc["items"]] == [it.item_id for it in rec.similar(item.item_id, k=4)]

    text = " [SEP] ".join(x for x in (item.title, item.category, item.brand) if x)
    status, doc = client.post("/v1/search", {"text": text, "k": 3})
    assert status == 200 and doc["items"][0]["item_id"] == item.item_id
    status, doc = client.post("/v1/search", {"text": text, "k": 3, "where": {"deny_ids": [item.item_id]}})
    assert status == 200 and item.item_id not in [it["item_id"] for it in doc["items"]]


def test_health_status_and_openapi(client, rec):
    status, doc, _ = client.call("GET", "/v1/health")
    assert (status, doc) == (200, {"status": "ok", "catalog_version": 1, "catalog_items": len(rec.catalog)})
    client.post("/v1/recommend", {"user_id": "a"})
    client.post("/v1/recommend", {"user_id": "a", "k": 0})
    status, doc, _ = client.call("GET", "/v1/status?verbose=1")  # a query string is ignored
    assert status == 200
    assert doc["catalog"] == {"version": 1, "items": len(rec.catalog), "bundle_version": 1, "source": "bundle"}
    assert doc["bundle"]["model_sha256"] == rec.manifest["model"]["sha256"]
    assert doc["isa"] and doc["threads"] == 1 and doc["board"] is None and doc["uptime_s"] >= 0
    assert doc["requests"]["by_operation"]["recommend"] == 2
    assert doc["requests"]["by_status"]["200"] >= 2 and doc["requests"]["by_status"]["422"] == 1
    status, spec, headers = client.call("GET", "/openapi.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert spec == json.loads(json.dumps(openapi_spec()))


def test_head_and_options(tcp_client):
    status, doc, headers = tcp_client.call("HEAD", "/v1/health")
    assert status == 200 and doc is None and int(headers["Content-Length"]) > 0
    status, _, headers = tcp_client.call("OPTIONS", "/v1/recommend")
    assert status == 204 and headers["Allow"] == "POST, OPTIONS"
    status, _, headers = tcp_client.call("OPTIONS", "/v1/status")
    assert status == 204 and headers["Allow"] == "GET, HEAD, OPTIONS"
    assert tcp_client.call("GET", "/v1/health")[0] == 200  # the same connection still works


def test_openapi_document_is_complete():
    spec = openapi_spec()
    ops = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    assert ops == {
        ("POST", "/v1/record"),
        ("POST", "/v1/recommend"),
        ("POST", "/v1/similar"),
        ("POST", "/v1/search"),
        ("POST", "/v1/recommend_many"),
        ("POST", "/v1/search_many"),
        ("POST", "/v1/impression"),
        ("POST", "/v1/history"),
        ("POST", "/v1/forget"),
        ("GET", "/v1/health"),
        ("GET", "/v1/status"),
        ("GET", "/openapi.json"),
        ("GET", "/metrics"),
    }
    refs = set()

    def walk(x):
        if isinstance(x, dict):
            if "$ref" in x:
                refs.add(x["$ref"].rsplit("/", 1)[1])
            assert not any(str(k).startswith("x-") for k in x), x
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(spec)
    assert refs <= set(spec["components"]["schemas"])
    rec_req = spec["components"]["schemas"]["RecommendRequest"]
    assert rec_req["required"] == ["user_id"] and rec_req["additionalProperties"] is False
    assert rec_req["properties"]["k"] == {**rec_req["properties"]["k"], "minimum": 1, "maximum": MAX_K}


# ---- refusals -----------------------------------------------------------------------------------

BAD_BODIES = [
    # (path, body, status, error, field)
    ("/v1/recommend", [], 422, "validation_error", None),
    ("/v1/recommend", {}, 422, "validation_error", "user_id"),
    ("/v1/recommend", {"user": "u1"}, 422, "validation_error", "user"),
    ("/v1/recommend", {"user_id": "   "}, 422, "validation_error", "user_id"),
    ("/v1/recommend", {"user_id": ""}, 422, "validation_error", "user_id"),
    ("/v1/recommend", {"user_id": 42}, 422, "validation_error", "user_id"),
    ("/v1/recommend", {"user_id": "u", "k": 0}, 422, "validation_error", "k"),
    ("/v1/recommend", {"user_id": "u", "k": MAX_K + 1}, 422, "validation_error", "k"),
    ("/v1/recommend", {"user_id": "u", "k": "5"}, 422, "validation_error", "k"),
    ("/v1/recommend", {"user_id": "u", "k": True}, 422, "validation_error", "k"),
    ("/v1/recommend", {"user_id": "u", "k": 2.5}, 422, "validation_error", "k"),
    ("/v1/recommend", {"user_id": "u", "exclude_seen": "yes"}, 422, "validation_error", "exclude_seen"),
    ("/v1/recommend", {"user_id": "u", "where": []}, 422, "validation_error", "where"),
    ("/v1/recommend", {"user_id": "u", "where": {"colour": "red"}}, 422, "validation_error", "where.colour"),
    ("/v1/recommend", {"user_id": "u", "where": {"min_price": "10"}}, 422, "validation_error", "where.min_price"),
    ("/v1/recommend", {"user_id": "u", "where": {"max_price": None}}, 422, "validation_error", "where.max_price"),
    ("/v1/recommend", {"user_id": "u", "where": {"in_stock": 1}}, 422, "validation_error", "where.in_stock"),
    ("/v1/recommend", {"user_id": "u", "where": {"category": 3}}, 422, "validation_error", "where.category"),
    (
        "/v1/recommend",
        {"user_id": "u", "where": {"allow_ids": ["a", 1]}},
        422,
        "validation_error",
        "where.allow_ids[1]",
    ),
    ("/v1/record", {"user_id": "u", "item_id": "SKU-00001"}, 422, "validation_error", "action"),
    ("/v1/record", {"user_id": "u", "item_id": "SKU-00001", "action": "buy"}, 422, "validation_error", "action"),
    (
        "/v1/record",
        {"user_id": "u", "item_id": "SKU-00001", "action": "view", "ts": "now"},
        422,
        "validation_error",
        "ts",
    ),
    ("/v1/record", {"user_id": "u", "item_id": "nope", "action": "view"}, 404, "unknown_item", "item_id"),
    ("/v1/similar", {"item_id": "nope"}, 404, "unknown_item", "item_id"),
    ("/v1/similar", {"item_id": ""}, 422, "validation_error", "item_id"),
    ("/v1/search", {"text": " \n"}, 422, "validation_error", "text"),
    ("/v1/search", {"text": "x", "k": -1}, 422, "validation_error", "k"),
    ("/v1/history", {"user_id": ["u"]}, 422, "validation_error", "user_id"),
    ("/v1/forget", {}, 422, "validation_error", "user_id"),
]


@pytest.mark.parametrize(("path", "body", "status", "error", "field"), BAD_BODIES)
def test_bad_bodies_are_refused_with_the_field_named(client, path, body, status, error, field):
    got, doc = client.post(path, body)
    assert (got, doc["error"], doc.get("field")) == (status, error, field), doc
    assert doc["message"].startswith(field or "request body"), doc
    assert client.call("GET", "/v1/health")[0] == 200  # the same connection goes on


BAD_RAW = [
    # (raw body, content type, status, error, part of the message)
    (b"{bad", "application/json", 400, "invalid_json", "not valid JSON"),
    (b"", "application/json", 400, "invalid_json", "empty"),
    (b'{"user_id": "u", "k": NaN}', "application/json", 400, "invalid_json", "NaN"),
    (b'{"user_id": "\xff"}', "application/json", 400, "invalid_json", "not UTF-8"),
    # deep nesting is refused at the first bracket the contract does not take (no recursion, no 500)
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 422, "validation_error", "request body: Expected `object`"),
    (
        b'{"user_id": "u", "where": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "application/json",
        422,
        "validation_error",
        "where: Expected `object`",
    ),
    (b'{"user_id": "u", "k": 1' + b"0" * 5000 + b"}", "application/json", 422, "validation_error", "out of range"),
    (b'{"user_id": "u", "where": {"min_price": 1e400}}', "application/json", 422, "validation_error", "finite"),
    (
        b'{"user_id": "u", "where": {"min_price": 1' + b"0" * 400 + b"}}",
        "application/json",
        422,
        "validation_error",
        "finite",
    ),
    (b'{"user_id": "\\ud800"}', "application/json", 400, "invalid_json", "surrogate"),
    (b'{"user_id": "u"}', "text/plain", 415, "unsupported_media_type", "text/plain"),
    (b'{"user_id": "u"}', "application/json; charset=latin-1", 415, "unsupported_media_type", "latin-1"),
    (b'{"user_id": "u"}', None, 415, "unsupported_media_type", "missing"),
]


@pytest.mark.parametrize(("raw", "ctype", "status", "error", "text"), BAD_RAW)
def test_bad_raw_bodies(client, raw, ctype, status, error, text):
    headers = {} if ctype is None else {"Content-Type": ctype}
    got, doc, _ = client.call("POST", "/v1/recommend", raw=raw, headers=headers)
    assert (got, doc["error"]) == (status, error) and text in doc["message"], doc
    assert client.call("GET", "/v1/health")[0] == 200


def test_integral_float_k_is_an_integer(client):
    status, doc = client.post("/v1/recommend", {"user_id": "u", "k": 3.0})
    assert status == 200 and len(doc["items"]) == 3


def test_unknown_path_and_wrong_method(client):
    status, doc, _ = client.call("GET", "/v1/nope")
    assert (status, doc["error"]) == (404, "not_found") and "/v1/nope" in doc["message"]
    status, doc, headers = client.call("GET", "/v1/recommend")
    assert (status, doc["error"], headers["Allow"]) == (405, "method_not_allowed", "POST, OPTIONS")
    status, doc, headers = client.call("DELETE", "/v1/status")
    assert (status, headers["Allow"]) == (405, "GET, HEAD, OPTIONS") and "DELETE" in doc["message"]
    status, doc, _ = client.call("BREW", "/v1/status")  # any token is a method: 405, never 501
    assert status == 405


def test_body_too_large(served, client):
    body = b'{"user_id": "' + b"x" * MAX_BODY + b'"}'
    status, doc, headers = client.call("POST", "/v1/recommend", raw=body)
    assert (status, doc["error"]) == (413, "payload_too_large") and str(MAX_BODY) in doc["message"]
    assert headers["Connection"] is None  # read and dropped: the connection goes on
    assert client.call("GET", "/v1/health")[0] == 200
    # refused from the header alone: the server does not wait for 10 GB that never come
    out = raw_exchange(
        served[1].tcp_address,
        b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000000\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 413 ") and b'"payload_too_large"' in out and b"Connection: close" in out
    # a client that waits for "100 Continue" gets the 413 instead, not an invitation to send
    out = raw_exchange(
        served[1].tcp_address,
        b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: 2000000\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in out


@pytest.mark.parametrize(
    ("request_bytes", "status", "error"),
    [
        (
            b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            411,
            "length_required",
        ),
        (b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "bad_request"),
        (b"POST /v1/recommend HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, "bad_request"),
        (b"POST /v1/recommend HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 413, "payload_too_large"),
        (b"GET /v1/health HTTP/2.0\r\n\r\n", 400, "bad_request"),
        (b"NONSENSE\r\n\r\n", 400, "bad_request"),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, "uri_too_long"),
        (b"GET /v1/health HTTP/1.1\r\n" + b"X-A: b\r\n" * 120 + b"\r\n", 431, "headers_too_large"),
    ],
)
def test_malformed_http_gets_a_json_4xx_and_a_closed_connection(served, request_bytes, status, error):
    out = raw_exchange(served[1].tcp_address, request_bytes)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), out[:200]
    assert b"Connection: close" in head and json.loads(body)["error"] == error


def test_keep_alive_many_requests_on_one_connection(served, rec):
    _, servers = served
    with socket.create_connection(servers.tcp_address, timeout=10) as s:
        req = (
            b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 22\r\n\r\n{"user_id":"u","k":2}\n'
        )
        bad = b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        s.sendall((req + bad) * 10)  # pipelined: 20 requests, every other one refused with 422
        f = s.makefile("rb")
        for i in range(20):
            status = f.readline()
            length = 0
            while (line := f.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = json.loads(f.read(length))
            assert status.startswith(b"HTTP/1.1 200" if i % 2 == 0 else b"HTTP/1.1 422"), (i, status)
            assert ("items" in body) if i % 2 == 0 else body["field"] == "user_id"
        f.close()


def test_http_1_0_keep_alive(served):
    with socket.create_connection(served[1].tcp_address, timeout=10) as s:
        f = s.makefile("rb")
        for _ in range(3):
            s.sendall(b"GET /v1/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            head = b""
            while (line := f.readline()) != b"\r\n":
                head += line
            assert head.startswith(b"HTTP/1.1 200") and b"Connection: keep-alive" in head
            f.read(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
        f.close()


def test_a_bug_is_a_500_with_a_logged_traceback_and_the_server_lives_on(client, rec, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(rec, "similar", broken)
    with caplog.at_level(logging.ERROR, logger="shelfrank.device.service.serve"):
        status, doc = client.post("/v1/similar", {"item_id": rec.catalog.item_ids[0]})
    assert (status, doc["error"]) == (500, "internal_error") and "boom" not in doc["message"]
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)
    monkeypatch.undo()
    assert client.post("/v1/similar", {"item_id": rec.catalog.item_ids[0]})[0] == 200


def test_shutdown_ends_idle_keep_alive_connections_and_removes_the_socket(rec, sock_dir):
    from shelfrank.device.service.endpoints import Service
    from shelfrank.device.service.serve import start

    servers = start(Service(rec), port=0, unix=sock_dir / "x.sock")
    tcp, unix = Client(tcp=servers.tcp_address), Client(unix=servers.unix_path)
    assert tcp.call("GET", "/v1/health")[0] == 200 and unix.call("GET", "/v1/health")[0] == 200
    servers.close(timeout=5)
    assert not (sock_dir / "x.sock").exists()
    with pytest.raises((ConnectionError, OSError)):
        tcp.call("GET", "/v1/health")  # the idle connection was ended, and nothing listens
    tcp.close()
    unix.close()


def test_unix_socket_path_rules(rec, sock_dir):
    from shelfrank.device.service.endpoints import Service
    from shelfrank.device.service.serve import start
    from shelfrank.errors import InputError

    (sock_dir / "file").write_text("not a socket")
    with pytest.raises(InputError, match="not a socket"):
        start(Service(rec), port=None, unix=sock_dir / "file")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_dir / "stale.sock"))  # bound, never listening: what a killed server leaves
    stale.close()
    servers = start(Service(rec), port=None, unix=sock_dir / "stale.sock")
    try:
        assert servers.tcp_address is None and servers.urls == [f"unix:{sock_dir / 'stale.sock'}"]
        assert oct((sock_dir / "stale.sock").stat().st_mode & 0o777) == "0o660"
        with pytest.raises(InputError, match="another server is listening"):
            start(Service(rec), port=None, unix=sock_dir / "stale.sock")
        c = Client(unix=servers.unix_path)
        assert c.call("GET", "/v1/health")[0] == 200
        c.close()
    finally:
        servers.close()
    with pytest.raises(InputError, match="nothing to listen on"):
        start(Service(rec), port=None)


def test_port_in_use_is_a_clear_error(rec, served):
    from shelfrank.device.service.endpoints import Service
    from shelfrank.device.service.serve import start
    from shelfrank.errors import InputError

    host, port = served[1].tcp_address
    with pytest.raises(InputError, match=f"cannot listen on 127.0.0.1:{port}"):
        start(Service(rec), host=host, port=port)


def test_search_mode_and_what_the_score_means(client, rec):
    """/v1/search takes the library's modes; each answer says what its scores measure."""
    title = rec.catalog.title(0)
    kinds = {}
    for mode in ("hybrid", "dense", "lexical"):
        status, doc = client.post("/v1/search", {"text": title, "k": 3, "mode": mode})
        assert status == 200, doc
        assert [it["item_id"] for it in doc["items"]] == [it.item_id for it in rec.search(title, 3, mode=mode)]
        kinds[mode] = {it["score_kind"] for it in doc["items"]}
    assert kinds["dense"] == {"cosine"} and kinds["lexical"] == {"lexical"}
    assert kinds["hybrid"] == ({"fused"} if rec.catalog.lexical.available else {"cosine"})
    status, doc = client.post("/v1/search", {"text": title, "mode": "fuzzy"})
    assert status == 422 and "mode" in json.dumps(doc)
