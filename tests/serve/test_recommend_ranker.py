"""POST /v1/recommend with ``diversity`` and ``ranker`` on the tiny hybrid bundle: passed through
to the library, described in the OpenAPI document, bad values refused with the field named."""

from __future__ import annotations

import pytest

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


def _ids(doc) -> list[str]:
    return [it["item_id"] for it in doc["items"]]


def test_diversity_and_ranker_are_passed_through(hybrid_client, hybrid_rec):
    ids = hybrid_rec.catalog.item_ids
    nbrs = hybrid_rec.catalog.neighbor_ids
    rows = [int(r) for r in (nbrs >= 0).sum(1).argsort()[::-1][:4]]  # items with the most neighbours
    for r, action in zip(rows, ("view", "click", "cart", "purchase"), strict=False):
        assert hybrid_client.post("/v1/record", {"user_id": "u", "item_id": ids[r], "action": action})[0] == 200
    answers = {}
    for body in (
        {},
        {"ranker": "hybrid"},
        {"ranker": "tower"},
        {"diversity": 0},
        {"diversity": 0.5},
        {"diversity": 1, "ranker": "tower"},
        {"diversity": 0.3, "exclude_seen": False, "where": {"in_stock": True}},
    ):
        status, doc = hybrid_client.post("/v1/recommend", {"user_id": "u", "k": 8, **body})
        assert status == 200, doc
        kw = {k: v for k, v in body.items() if k != "where"}
        want = hybrid_rec.recommend("u", 8, where=body.get("where"), **kw)
        assert _ids(doc) == [it.item_id for it in want]
        assert [it["score"] for it in doc["items"]] == pytest.approx([it.score for it in want])
        answers[repr(sorted(body.items()))] = _ids(doc)
    # each option changes the answer: hybrid is the default, and differs from the tower and from MMR
    assert answers[repr([])] == answers[repr([("ranker", "hybrid")])] == answers[repr([("diversity", 0)])]
    assert answers[repr([])] != answers[repr([("ranker", "tower")])]
    assert answers[repr([])] != answers[repr([("diversity", 0.5)])]


BAD = [
    ({"diversity": 1.5}, "diversity", "<= 1.0"),
    ({"diversity": -0.1}, "diversity", ">= 0.0"),
    ({"diversity": "0.5"}, "diversity", "got `str`"),
    ({"diversity": True}, "diversity", "got `bool`"),
    ({"diversity": None}, "diversity", "got `null`"),
    ({"ranker": "gbdt"}, "ranker", "expected one of 'hybrid', 'tower'"),
    ({"ranker": "Hybrid"}, "ranker", "expected one of 'hybrid', 'tower'"),
    ({"ranker": ""}, "ranker", "Invalid enum value"),
    ({"ranker": 1}, "ranker", "got `int`"),
    ({"ranker": None}, "ranker", "got `null`"),
    ({"rankr": "tower"}, "rankr", "not a known field"),
]


@pytest.mark.parametrize(("extra", "field", "words"), BAD)
def test_bad_diversity_or_ranker_is_a_422_naming_the_field(hybrid_client, extra, field, words):
    status, doc = hybrid_client.post("/v1/recommend", {"user_id": "u", **extra})
    assert (status, doc["error"], doc.get("field")) == (422, "validation_error", field), doc
    assert doc["message"].startswith(field) and words in doc["message"], doc
    assert hybrid_client.call("GET", "/v1/health")[0] == 200  # the connection goes on


def test_the_openapi_document_describes_them():
    props = openapi_spec()["components"]["schemas"]["RecommendRequest"]["properties"]
    assert props["diversity"]["minimum"] == 0 and props["diversity"]["maximum"] == 1
    assert props["diversity"]["default"] == 0 and props["diversity"]["type"] == "number"
    assert props["ranker"]["enum"] == ["hybrid", "tower"] and props["ranker"]["default"] == "hybrid"
    assert props["ranker"]["description"] and props["diversity"]["description"]
