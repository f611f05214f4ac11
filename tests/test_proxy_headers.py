"""Header handling: hop-by-hop removal both ways, X-Forwarded-*, Host and host_header,
X-Request-ID, preservation of end-to-end headers."""

from __future__ import annotations

import re

from helpers import build_request


def upstream_headers(resp) -> list[tuple[str, str]]:
    assert resp.status == 200, resp
    return [(k, v) for k, v in resp.json()["headers"]]


def values(headers, name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def names(headers) -> set[str]:
    return {k.lower() for k, _ in headers}


def assert_upstream_connection_header_ok(headers):
    """The proxy may announce its own keep-alive upstream, nothing else."""
    for value in values(headers, "connection"):
        assert value.strip().lower() == "keep-alive", headers


def test_hop_by_hop_request_headers_removed(proxy):
    resp = proxy.get(
        "/inspect",
        [
            ("Connection", "keep-alive, X-Custom-Hop, x-other-hop"),
            ("X-Custom-Hop", "secret"),
            ("X-Other-Hop", "secret2"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "gzip"),
            ("Upgrade", "websocket"),
            ("X-End-To-End", "yes"),
        ],
    )
    headers = upstream_headers(resp)
    present = names(headers)
    for hop in ("x-custom-hop", "x-other-hop", "keep-alive", "proxy-connection", "te", "upgrade"):
        assert hop not in present, headers
    assert_upstream_connection_header_ok(headers)
    assert values(headers, "x-end-to-end") == ["yes"]


def test_connection_header_split_over_several_lines(proxy):
    resp = proxy.get(
        "/inspect",
        [
            ("Connection", "X-A"),
            ("Connection", "X-B"),
            ("X-A", "1"),
            ("X-B", "2"),
            ("X-C", "3"),
        ],
    )
    headers = upstream_headers(resp)
    assert "x-a" not in names(headers) and "x-b" not in names(headers)
    assert values(headers, "x-c") == ["3"]
    assert_upstream_connection_header_ok(headers)


def test_te_trailers_is_kept(proxy):
    headers = upstream_headers(proxy.get("/inspect", [("TE", "trailers")]))
    assert [v.lower() for v in values(headers, "te")] == ["trailers"]


def test_transfer_encoding_not_forwarded_as_received(proxy):
    raw = (
        build_request("POST", "/inspect", [("Transfer-Encoding", "chunked")])
        + b"3\r\nabc\r\n0\r\n\r\n"
    )
    headers = upstream_headers(proxy.request(raw))
    # whatever framing the proxy chose, there is exactly one and it is valid
    te = values(headers, "transfer-encoding")
    cl = values(headers, "content-length")
    assert (te == [] and cl == ["3"]) or ([v.lower() for v in te] == ["chunked"] and cl == [])


def test_hop_by_hop_response_headers_removed(proxy):
    resp = proxy.get("/hop-response")
    assert resp.status == 200
    present = {k.lower() for k, _ in resp.headers}
    for hop in ("x-resp-hop", "keep-alive", "proxy-connection", "upgrade"):
        assert hop not in present, resp.headers
    assert "x-resp-hop" not in resp.connection_tokens
    assert resp.get("x-end-to-end") == "kept"
    assert resp.get_all("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert resp.body == b"hop\n"


def test_x_forwarded_for_added(proxy):
    headers = upstream_headers(proxy.get("/inspect"))
    assert values(headers, "x-forwarded-for") == ["127.0.0.1"]


def test_x_forwarded_for_appended_to_existing(proxy):
    headers = upstream_headers(proxy.get("/inspect", [("X-Forwarded-For", "203.0.113.7")]))
    assert ", ".join(values(headers, "x-forwarded-for")) == "203.0.113.7, 127.0.0.1"


def test_x_forwarded_for_appended_to_several_existing_lines(proxy):
    headers = upstream_headers(
        proxy.get(
            "/inspect",
            [
                ("X-Forwarded-For", "203.0.113.7"),
                ("X-Forwarded-For", "198.51.100.1, 198.51.100.2"),
            ],
        )
    )
    assert ", ".join(values(headers, "x-forwarded-for")) == (
        "203.0.113.7, 198.51.100.1, 198.51.100.2, 127.0.0.1"
    )


def test_x_forwarded_proto_and_host_set(proxy):
    headers = upstream_headers(
        proxy.get(
            "/inspect",
            [
                ("X-Forwarded-Proto", "https"),  # a client cannot claim https on a plain listener
                ("X-Forwarded-Host", "evil.example"),
            ],
        )
    )
    assert values(headers, "x-forwarded-proto") == ["http"]
    assert values(headers, "x-forwarded-host") == ["example.test"]


def test_host_kept_by_default(proxy):
    raw = build_request("GET", "/inspect", host="shop.example:8443")
    headers = upstream_headers(proxy.request(raw))
    assert values(headers, "host") == ["shop.example:8443"]
    assert values(headers, "x-forwarded-host") == ["shop.example:8443"]


def test_host_header_override(proxy_factory):
    proxy = proxy_factory(route={"host_header": "override.example"})
    raw = build_request("GET", "/inspect", host="public.example")
    headers = upstream_headers(proxy.request(raw))
    assert values(headers, "host") == ["override.example"]
    assert values(headers, "x-forwarded-host") == ["public.example"]


def test_absolute_form_target_forwarded_as_origin_form(proxy):
    raw = b"GET http://abs.example/inspect?x=1 HTTP/1.1\r\nHost: abs.example\r\n\r\n"
    resp = proxy.request(raw)
    assert resp.status == 200, resp
    info = resp.json()
    assert info["target"] == "/inspect?x=1"
    assert values(info["headers"], "host") == ["abs.example"]


UUIDISH = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)


def test_request_id_added_when_enabled(proxy_factory):
    proxy = proxy_factory(route={"request_id": True})
    ids = []
    for _ in range(5):
        headers = upstream_headers(proxy.get("/inspect"))
        rid = values(headers, "x-request-id")
        assert len(rid) == 1, headers
        assert UUIDISH.match(rid[0]), rid
        ids.append(rid[0])
    assert len(set(ids)) == 5


def test_request_id_kept_when_present(proxy_factory):
    proxy = proxy_factory(route={"request_id": True})
    headers = upstream_headers(proxy.get("/inspect", [("X-Request-ID", "client-chosen-42")]))
    assert values(headers, "x-request-id") == ["client-chosen-42"]


def test_request_id_not_added_by_default(proxy):
    headers = upstream_headers(proxy.get("/inspect"))
    assert values(headers, "x-request-id") == []


def test_end_to_end_headers_preserved_in_order_with_duplicates(proxy):
    sent = [
        ("Accept", "text/html, */*;q=0.1"),
        ("X-Dup", "first"),
        ("Cookie", "a=1"),
        ("X-Dup", "second"),
        ("X-Empty", ""),
        ("x-MiXeD-CaSe", "Value With  Two Spaces"),
        ("X-Latin", "caf\xe9"),
        ("X-Tab", "a\tb"),
        ("Authorization", "Bearer abc.def"),
    ]
    headers = upstream_headers(proxy.get("/inspect", sent))
    kept = [(k.lower(), v) for k, v in headers if k.lower() in {n.lower() for n, _ in sent}]
    assert kept == [(k.lower(), v) for k, v in sent]


def test_header_whitespace_around_value_is_trimmed(proxy):
    raw = b"GET /inspect HTTP/1.1\r\nHost: example.test\r\nX-Padded: \t value \t \r\n\r\n"
    headers = upstream_headers(proxy.request(raw))
    assert values(headers, "x-padded") == ["value"]


def test_exactly_max_headers_accepted(proxy):
    # Host plus 99 more = 100 = max_headers
    extra = [(f"X-H{i}", str(i)) for i in range(99)]
    headers = upstream_headers(proxy.get("/inspect", extra))
    for i in range(99):
        assert values(headers, f"x-h{i}") == [str(i)]


def test_large_but_allowed_head(proxy):
    big = "v" * 20000
    headers = upstream_headers(proxy.get("/inspect", [("X-Big", big)]))
    assert values(headers, "x-big") == [big]


UNDERSCORED = [
    ("X_Forwarded_For", "203.0.113.66"),
    ("X_Forwarded_Host", "admin.example"),
    ("Content_Length", "0"),
    ("Transfer_Encoding", "chunked"),
    ("X_Custom", "a"),
    ("x-mixed_name", "b"),
    ("_", "c"),
]


def test_header_names_with_underscores_are_dropped(proxy):
    """By default (NGINX's ``underscores_in_headers off``) no field whose name has an
    '_' reaches the upstream: a backend that reads '_' as '-' (CGI, WSGI, PHP) cannot
    be handed a second X-Forwarded-For or framing field under a look-alike name."""
    headers = upstream_headers(proxy.get("/inspect", [*UNDERSCORED, ("X-Kept", "yes")]))
    assert not [name for name in names(headers) if "_" in name], headers
    assert values(headers, "x-forwarded-for") == ["127.0.0.1"]
    assert values(headers, "x-forwarded-host") == ["example.test"]
    assert values(headers, "x-kept") == ["yes"]


def test_underscores_in_headers_keeps_them(proxy_factory):
    proxy = proxy_factory(route={"underscores_in_headers": True})
    headers = upstream_headers(proxy.get("/inspect", [*UNDERSCORED, ("X-Kept", "yes")]))
    kept = [(k, v) for k, v in headers if "_" in k]
    assert kept == UNDERSCORED, headers
    assert values(headers, "x-forwarded-for") == ["127.0.0.1"]
    assert values(headers, "x-kept") == ["yes"]
