"""Property-based tests over the service's boundary (issue 13): the request-body decoders, the whole
service behind them, and the HTTP request parser fed raw bytes over a real socket. Whatever comes
in, the only outcomes are a 2xx or a 4xx (``RequestBodyError`` from a decoder), never a 5xx, an
untyped exception, a handler that dies without an answer, or a hang. 4,600 inputs.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shelfrank.device import Recommender, formats
from shelfrank.device.service.endpoints import Service
from shelfrank.device.service.routes import HttpApi
from shelfrank.device.service.serve import start
from shelfrank.errors import RequestBodyError
from tests.serve._http import raw_exchange  # the one raw-socket read loop of the service tests

pytestmark = pytest.mark.fuzz

BODIES = {
    "/v1/record": formats.RecordRequest,
    "/v1/recommend": formats.RecommendRequest,
    "/v1/similar": formats.SimilarRequest,
    "/v1/search": formats.SearchRequest,
    "/v1/history": formats.UserRequest,
    "/v1/forget": formats.UserRequest,
    "/v1/impression": formats.ImpressionRequest,
}
PATHS = [*BODIES, "/v1/health", "/v1/status", "/openapi.json"]
FIELDS = ["user_id", "item_id", "action", "ts", "k", "exclude_seen", "where", "text", "item_ids", "surface"]
WHERE_FIELDS = ["category", "brand", "min_price", "max_price", "in_stock", "allow_ids", "deny_ids"]
#: digits str.isdigit() takes that int() may not, and other near-numbers
ODD_DIGITS = ["²", "³", "١٢", "٣", "𝟙", "߁", "0x10", "-1", "+5", "1e3", " 7", "7 ", "1_0", "", "9" * 30, "０"]


def _settings(n: int):
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["view", "click", "cart", "purchase", "", " ", "\ud800", "SKU-00001"]),
)
_any_json = st.recursive(
    _leaf,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(st.sampled_from([*FIELDS, *WHERE_FIELDS]) | st.text(max_size=6), kids, max_size=5),
    ),
    max_leaves=16,
)
_ids = st.sampled_from(["u1", "u42", "SKU-00001", "SKU-00002", "nope", " ", "x" * 1100]) | st.text(max_size=10)
_where = st.fixed_dictionaries(
    {},
    optional={
        "category": st.text(max_size=8) | st.lists(st.text(max_size=8), max_size=3) | _leaf,
        "brand": st.text(max_size=8) | _leaf,
        "min_price": st.floats(allow_nan=False, allow_infinity=False) | _leaf,
        "max_price": st.floats(allow_nan=False, allow_infinity=False) | _leaf,
        "in_stock": st.booleans() | _leaf,
        "allow_ids": st.lists(_ids, max_size=4) | _leaf,
        "deny_ids": st.lists(_ids, max_size=4) | _leaf,
    },
)
#: bodies close to valid, so that most get through the decoder into the operations
_near_valid = st.fixed_dictionaries(
    {},
    optional={
        "user_id": _ids,
        "item_id": _ids,
        "action": st.sampled_from(["view", "click", "cart", "purchase", "buy"]),
        "ts": st.floats(min_value=0, max_value=2e9) | _leaf,
        "k": st.integers(min_value=-2, max_value=1002) | st.sampled_from([3.0, 2.5, "5", True]),
        "exclude_seen": st.booleans() | _leaf,
        "where": _where | _leaf,
        "text": st.text(max_size=40) | st.sampled_from(["wireless headphones", " ", "x" * 5000]),
        "item_ids": st.lists(_ids, max_size=4) | _leaf,
        "surface": st.sampled_from(["search", "home_row", "Search", "", "x" * 40]) | st.text(max_size=8) | _leaf,
    },
)


def _encode(doc, ascii_only: bool) -> bytes:
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


_body_bytes = st.one_of(
    st.builds(_encode, _near_valid, st.booleans()),
    st.builds(_encode, _any_json, st.booleans()),
    st.binary(max_size=64),
    # a valid body with bytes spliced in: broken JSON at any position
    st.builds(
        lambda doc, at, junk: (b := _encode(doc, True))[: at % (len(b) + 1)] + junk + b[at % (len(b) + 1) :],
        _near_valid,
        st.integers(min_value=0, max_value=200),
        st.binary(min_size=1, max_size=4),
    ),
)


# ---- the decoders -------------------------------------------------------------------------------


@_settings(3000)
@given(type_=st.sampled_from(sorted(set(BODIES.values()), key=lambda t: t.__name__)), body=_body_bytes)
def test_request_decoders_take_a_struct_or_refuse_with_a_typed_error(type_, body):
    try:
        req = formats.decode_request(body, type_)
    except RequestBodyError as e:
        assert str(e) and (e.field is None or isinstance(e.field, str))
        if e.field is not None and not e.malformed:
            assert str(e).startswith(e.field)
        return
    assert isinstance(req, type_)
    if hasattr(req, "k"):
        assert type(req.k) is int and 1 <= req.k <= formats.MAX_K
    for name in ("user_id", "text"):
        if getattr(req, name, None) is not None:  # search's user_id is optional (personalised search)
            assert getattr(req, name).strip()
    where = getattr(req, "where", None)
    if isinstance(where, formats.Where):
        filt = where.as_filter()
        assert filt is None or set(filt) <= set(WHERE_FIELDS)


# ---- the whole service, in process -------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_service(bundle_and_key):
    bundle, pub = bundle_and_key
    with tempfile.TemporaryDirectory() as state:
        rec = Recommender.open(bundle, public_key=pub, state_dir=Path(state) / "state")
        service = HttpApi(Service(rec))
        errors: list[logging.LogRecord] = []
        handler = logging.Handler(logging.ERROR)
        handler.emit = errors.append  # type: ignore[method-assign]
        log = logging.getLogger("shelfrank.device.service.serve")
        log.addHandler(handler)
        try:
            yield service, errors
        finally:
            log.removeHandler(handler)
            rec.close()


@_settings(800)
@given(
    method=st.sampled_from(["POST", "POST", "POST", "GET", "HEAD", "OPTIONS", "PUT", "BREW"]),
    path=st.sampled_from(PATHS) | st.text(max_size=10).map(lambda s: "/" + s),
    ctype=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", None]),
    body=_body_bytes,
)
def test_the_service_answers_any_request_with_a_2xx_or_4xx(fuzz_service, method, path, ctype, body):
    service, errors = fuzz_service
    status, payload, _ = service.handle(method, path, ctype, body)
    assert status < 500, (status, payload)
    assert not errors, errors[0].getMessage()
    if payload:
        doc = json.loads(payload)
        assert ("error" in doc) == (status >= 400)


# ---- the HTTP request parser: raw bytes over a real socket --------------------------------------


@pytest.fixture(scope="module")
def fuzz_server(fuzz_service):
    service, errors = fuzz_service
    servers = start(service, port=0, request_deadline=3.0, idle_timeout=3.0)
    yield servers.tcp_address, service, errors
    servers.close(timeout=5)


_token = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8)
_header = st.one_of(
    st.tuples(st.just("Content-Length"), st.integers(min_value=0, max_value=80).map(str) | st.sampled_from(ODD_DIGITS)),
    st.tuples(st.just("Content-Type"), st.sampled_from(["application/json", "text/plain", "application/json; x"])),
    st.tuples(st.just("Transfer-Encoding"), st.sampled_from(["chunked", "gzip", ""])),
    st.tuples(st.just("Expect"), st.sampled_from(["100-continue", "nothing"])),
    st.tuples(st.just("Connection"), st.sampled_from(["close", "keep-alive", "upgrade"])),
    st.tuples(_token, st.text(max_size=12)),
)


def _request(method: str, path: str, version: str, headers: list[tuple[str, str]], body: bytes, eol: bytes) -> bytes:
    line = " ".join(p for p in (method, path, version) if p).encode("utf-8", "surrogatepass")
    head = b"".join(f"{k}: {v}".encode("utf-8", "surrogatepass") + eol for k, v in headers)
    return line + eol + head + eol + body


_raw_request = st.one_of(
    st.builds(
        _request,
        st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "DELETE", "BREW", ""]) | _token,
        st.sampled_from(PATHS) | st.text(max_size=12).map(lambda s: "/" + s),
        st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1x", "", "HTTP/1.1 extra"]),
        st.lists(_header, max_size=5),
        _body_bytes,
        st.sampled_from([b"\r\n", b"\n", b"\r"]),
    ),
    st.binary(max_size=200),
)


@_settings(800)
@given(data=_raw_request)
def test_the_http_parser_answers_any_bytes_with_a_4xx_or_a_close_never_a_5xx(fuzz_server, data):
    address, service, errors = fuzz_server
    out = raw_exchange(address, data, half_close=True).removeprefix(
        b"HTTP/1.1 100 Continue\r\n\r\n"
    )  # an interim answer
    if out:
        assert out.startswith(b"HTTP/1.1 ") and out[9:10] in (b"2", b"4"), out[:200]
    assert not errors, errors[0].getMessage()  # no handler died (socketserver logs it) and no 500
    counts = service.service.metrics.requests()  # by (operation, status), as /metrics reports them
    assert not [key for key in counts if key[1] >= 500], counts
