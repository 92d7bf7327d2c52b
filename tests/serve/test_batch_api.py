"""POST /v1/recommend_many and /v1/search_many (issue 15, build 1) and the explained items (build 2)
over a real server on the tiny hybrid bundle: one list per input in order, equal to the single
endpoints' answers; bounded lists refused with the field named; OpenAPI describes them."""

from __future__ import annotations

import pytest

from shelfrank.device.formats import MAX_BATCH_TEXTS, MAX_BATCH_USERS, REASONS, SCORE_KINDS
from shelfrank.device.service.endpoints import Service
from shelfrank.device.service.serve import openapi_spec, start

from .conftest import Client


@pytest.fixture()
def hybrid_client(hybrid_rec):
    service = Service(hybrid_rec, board=None)
    servers = start(service, host="127.0.0.1", port=0)
    c = Client(tcp=servers.tcp_address)
    yield c
    c.close()
    servers.close()


def test_recommend_many_equals_recommend(hybrid_client, hybrid_rec):
    ids = hybrid_rec.catalog.item_ids
    for u, first in (("a", 0), ("b", 50), ("c", 120)):
        for j, action in enumerate(("view", "click", "cart")):
            body = {"user_id": u, "item_id": ids[first + 7 * j], "action": action}
            assert hybrid_client.post("/v1/record", body)[0] == 200
    users = ["a", "cold", "b", "c", "a"]
    for opts in ({}, {"k": 3, "ranker": "tower"}, {"diversity": 0.4, "where": {"in_stock": True}}):
        status, doc = hybrid_client.post("/v1/recommend_many", {"user_ids": users, "k": 6, **opts})
        assert status == 200, doc
        assert doc["catalog_version"] == hybrid_rec.catalog.version
        assert [r["user_id"] for r in doc["results"]] == users
        for r in doc["results"]:
            status, one = hybrid_client.post("/v1/recommend", {"user_id": r["user_id"], "k": 6, **opts})
            assert status == 200 and r["items"] == one["items"]
    reasons = {it["reason"] for r in doc["results"] for it in r["items"]}
    assert reasons <= set(REASONS) and "popular" in reasons  # the cold shopper
    for r in doc["results"]:
        for it in r["items"]:
            assert it["score_kind"] in SCORE_KINDS and it["reason_text"]
            assert it["score_kind"] == ("popularity" if r["user_id"] == "cold" else "fused")


def test_search_many_equals_search(hybrid_client, hybrid_rec):
    texts = [hybrid_rec.catalog.item(5).title, "game", "game"]
    status, doc = hybrid_client.post("/v1/search_many", {"texts": texts, "k": 4})
    assert status == 200, doc
    assert [r["text"] for r in doc["results"]] == texts
    for r in doc["results"]:
        status, one = hybrid_client.post("/v1/search", {"text": r["text"], "k": 4})
        assert status == 200 and r["items"] == one["items"]
        assert all(it["reason"] == "search" for it in r["items"])


@pytest.mark.parametrize(
    "path,body,field",
    [
        ("/v1/recommend_many", {"user_ids": []}, "user_ids"),
        ("/v1/recommend_many", {"user_ids": [f"u{i}" for i in range(MAX_BATCH_USERS + 1)]}, "user_ids"),
        ("/v1/recommend_many", {"user_ids": ["u", " "]}, "user_ids[1]"),
        ("/v1/recommend_many", {"user_ids": "u"}, "user_ids"),
        ("/v1/recommend_many", {"user_ids": ["u"], "k": 0}, "k"),
        ("/v1/recommend_many", {"user_ids": ["u"], "ranker": "nope"}, "ranker"),
        ("/v1/recommend_many", {"user_id": "u"}, "user_id"),
        ("/v1/search_many", {"texts": []}, "texts"),
        ("/v1/search_many", {"texts": ["x"] * (MAX_BATCH_TEXTS + 1)}, "texts"),
        ("/v1/search_many", {"texts": ["game", ""]}, "texts[1]"),
        ("/v1/search_many", {"texts": ["game"], "where": {"colour": "red"}}, "where.colour"),
    ],
)
def test_bad_batch_bodies_name_the_field(hybrid_client, path, body, field):
    status, doc = hybrid_client.post(path, body)
    assert (status, doc["error"], doc["field"]) == (422, "validation_error", field), doc


def test_unknown_filter_value_in_a_batch(hybrid_client):
    status, doc = hybrid_client.post("/v1/recommend_many", {"user_ids": ["u"], "where": {"category": "Nope"}})
    assert (status, doc["error"], doc["field"]) == (404, "unknown_filter_value", "where.category")
    status, doc = hybrid_client.post("/v1/search_many", {"texts": ["game"], "where": {"brand": ["Nope"]}})
    assert (status, doc["error"], doc["field"]) == (404, "unknown_filter_value", "where.brand")


def test_openapi_describes_the_batch_endpoints_and_the_reasons():
    spec = openapi_spec()
    schemas = spec["components"]["schemas"]
    assert spec["paths"]["/v1/recommend_many"]["post"]["operationId"] == "recommend_many"
    assert spec["paths"]["/v1/search_many"]["post"]["operationId"] == "search_many"
    users = schemas["RecommendManyRequest"]["properties"]["user_ids"]
    assert (users["minItems"], users["maxItems"]) == (1, MAX_BATCH_USERS)
    texts = schemas["SearchManyRequest"]["properties"]["texts"]
    assert (texts["minItems"], texts["maxItems"]) == (1, MAX_BATCH_TEXTS)
    item = schemas["Item"]["properties"]
    assert sorted(item["reason"]["enum"]) == sorted(REASONS) and sorted(item["score_kind"]["enum"]) == sorted(
        SCORE_KINDS
    )
    assert {"reason", "reason_items", "reason_text", "score_kind"} <= set(schemas["Item"]["required"])
