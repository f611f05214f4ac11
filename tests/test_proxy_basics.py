"""End-to-end basics: startup output, requests with and without bodies, byte-exact echo
through httpx and raw sockets, several upstreams."""

from __future__ import annotations

import hashlib

import pytest
from helpers import (
    build_request,
    chunked,
    payload,
    payload_chunks,
    payload_sha256,
    sha256,
)


def test_startup_prints_route_and_listening_lines(proxy, backend):
    lines = proxy.output.snapshot()
    assert f"fastpause: route app -> {backend.address}" in lines
    listening = [i for i, s in enumerate(lines) if s.startswith("fastpause: listening on")]
    routes = [i for i, s in enumerate(lines) if s.startswith("fastpause: route")]
    assert listening and routes and max(routes) < listening[0]
    assert lines[listening[0]] == f"fastpause: listening on http://127.0.0.1:{proxy.port}"


def test_get_reaches_backend_with_origin_target(proxy, backend):
    resp = proxy.get("/inspect?a=1&b=two")
    assert resp.status == 200
    info = resp.json()
    assert info["method"] == "GET"
    assert info["target"] == "/inspect?a=1&b=two"
    assert info["version"] == "HTTP/1.1"
    assert info["body_length"] == 0
    assert backend.stats()["paths"] == {"/inspect": 1}


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_methods_with_content_length_body(proxy, method):
    body = payload(5000)
    resp = proxy.request(build_request(method, "/inspect", body=body))
    assert resp.status == 200, resp
    info = resp.json()
    assert info["method"] == method
    assert info["body_length"] == 5000
    assert info["body_sha256"] == sha256(body)


def test_get_with_body_is_forwarded_with_body(proxy):
    resp = proxy.request(build_request("GET", "/inspect", body=b"query in body"))
    assert resp.status == 200
    info = resp.json()
    assert info["body_length"] == 13
    assert info["body_sha256"] == sha256(b"query in body")


@pytest.mark.parametrize(
    "target",
    [
        "/inspect//a//b?x=%2F&y=a+b&z=/../%zz",
        "/inspect/;matrix=1/x?q=a%20b&q=%3F",
        "/inspect?",
        "/inspect/~user/!$&'()*+,;=:@-._",
        "/inspect/caf%C3%A9%2F%20/file.tar.gz",
    ],
)
def test_target_in_normal_form_forwarded_byte_exact(proxy, target):
    """A path already in normal form (see README, Routing) and any query go as sent."""
    resp = proxy.get(target)
    assert resp.status == 200, resp
    assert resp.json()["target"] == target


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/inspect/a/%2e%2e/b//c/./d?x=%2f&y=/../", "/inspect/b//c/d?x=%2f&y=/../"),
        ("/x/../inspect/%7euser/caf%c3%a9", "/inspect/~user/caf%C3%A9"),
    ],
)
def test_target_forwarded_in_normal_form(proxy, target, forwarded):
    """Dot segments resolved, unreserved characters decoded, hex in uppercase: the path
    the route was chosen for is the one the upstream receives; the query is as sent."""
    resp = proxy.get(target)
    assert resp.status == 200, resp
    assert resp.json()["target"] == forwarded


def test_target_climbing_above_the_root_is_refused(proxy, backend):
    heads = backend.stats()["heads"]
    resp = proxy.get("/inspect/../../etc/passwd")
    assert resp.status == 400, resp
    assert b"climbs above the root" in resp.body
    assert backend.stats()["heads"] == heads


def test_all_listen_addresses_serve(proxy_factory):
    from helpers import RawConn, free_port

    ports = [free_port(), free_port()]
    proxy = proxy_factory(top={"listen": [f"127.0.0.1:{p}" for p in ports]})
    for port in ports:
        with RawConn(port) as conn:
            conn.send(build_request("GET", f"/inspect?port={port}"))
            resp = conn.read_response()
            assert resp.status == 200
            assert resp.json()["target"] == f"/inspect?port={port}"
    lines = proxy.output.snapshot()
    assert any(str(ports[0]) in s for s in lines if s.startswith("fastpause: listening on"))


def test_empty_lines_before_request_line_are_ignored(proxy):
    resp = proxy.request(b"\r\n\r\n" + build_request("GET", "/inspect?blank=1"))
    assert resp.status == 200
    assert resp.json()["target"] == "/inspect?blank=1"


def test_absolute_form_authority_replaces_host(proxy):
    """RFC 9112 section 3.2.2: the request-target's authority wins over Host."""
    resp = proxy.request(b"GET http://uri.example/inspect HTTP/1.1\r\nHost: header.example\r\n\r\n")
    assert resp.status == 200, resp
    info = resp.json()
    assert info["target"] == "/inspect"
    assert [v for k, v in info["headers"] if k.lower() == "host"] == ["uri.example"]


@pytest.mark.parametrize("method", ["GET", "OPTIONS", "DELETE", "PROPFIND", "PURGE"])
def test_other_methods_are_forwarded(proxy, method):
    resp = proxy.request(build_request(method, "/inspect"))
    assert resp.status == 200, resp
    assert resp.json()["method"] == method


def test_backend_status_and_body_are_relayed(proxy):
    resp = proxy.get("/status/503")
    assert resp.status == 503
    assert resp.body == b"status 503\n"
    resp = proxy.get("/no/such/endpoint")
    assert resp.status == 404
    assert resp.body == b"no such endpoint\n"


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 1_000_000, 5_000_000])
def test_echo_content_length_byte_exact_raw(proxy, size):
    body = payload(size)
    resp = proxy.request(build_request("POST", "/echo", body=body, content_length=True))
    assert resp.status == 200
    assert resp.get("content-length") == str(size)
    assert len(resp.body) == size
    assert resp.body == body


def test_echo_all_byte_values(proxy):
    body = bytes(range(256)) * 1000 + b"\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"
    resp = proxy.post("/echo", body)
    assert resp.status == 200
    assert resp.body == body


@pytest.mark.parametrize("pieces", [1, 7, 300])
def test_chunked_request_body_byte_exact(proxy, pieces):
    body = payload(300_000)
    step = -(-len(body) // pieces)
    parts = [body[i : i + step] for i in range(0, len(body), step)]
    raw = build_request("POST", "/inspect", [("Transfer-Encoding", "chunked")]) + chunked(*parts)
    resp = proxy.request(raw)
    assert resp.status == 200, resp
    info = resp.json()
    assert info["body_length"] == len(body)
    assert info["body_sha256"] == sha256(body)


def test_chunked_request_sent_in_small_writes(proxy):
    """The body arrives in many small TCP writes, split at awkward places."""
    body = payload(20_000)
    raw = build_request("POST", "/echo", [("Transfer-Encoding", "chunked")]) + chunked(
        body[:1000], body[1000:1001], body[1001:]
    )
    with proxy.conn() as conn:
        for i in range(0, len(raw), 333):
            conn.send(raw[i : i + 333])
        resp = conn.read_response()
    assert resp.status == 200
    assert resp.body == body


def test_head_split_byte_by_byte(proxy):
    raw = build_request("POST", "/echo", [("X-Split", "yes")], body=b"split body")
    with proxy.conn() as conn:
        for i in range(len(raw)):
            conn.send(raw[i : i + 1])
        resp = conn.read_response()
    assert resp.status == 200
    assert resp.body == b"split body"


def test_echo_chunked_response_streams_body_back(proxy):
    body = payload(2_000_000)
    resp = proxy.post("/echo-chunked", body)
    assert resp.status == 200
    assert resp.framing == "chunked"
    assert resp.body == body


def test_download_large_response_byte_exact(proxy):
    with proxy.conn() as conn:
        conn.send(build_request("GET", "/download?size=20000000"))
        resp = conn.read_response()
    assert resp.status == 200
    assert resp.get("content-length") == "20000000"
    assert hashlib.sha256(resp.body).hexdigest() == payload_sha256(20_000_000)


# ----------------------------------------------------------------------------- httpx


def test_httpx_get_and_post(client):
    r = client.get("/inspect", params={"q": "a b"})
    assert r.status_code == 200
    assert r.json()["target"] == "/inspect?q=a+b"
    body = payload(123_456)
    r = client.post("/echo", content=body)
    assert r.status_code == 200
    assert r.content == body


def test_httpx_streaming_upload_is_chunked_and_exact(client):
    size = 3_000_000
    r = client.post("/inspect", content=payload_chunks(size))
    assert r.status_code == 200
    info = r.json()
    assert info["body_length"] == size
    assert info["body_sha256"] == payload_sha256(size)


def test_httpx_streaming_download(client):
    size = 8_000_000
    h = hashlib.sha256()
    n = 0
    with client.stream("GET", "/download", params={"size": size}) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            h.update(chunk)
            n += len(chunk)
    assert n == size
    assert h.hexdigest() == payload_sha256(size)


def test_httpx_put_chunked_echo_both_ways(client):
    size = 1_500_000
    r = client.put("/echo-chunked", content=payload_chunks(size))
    assert r.status_code == 200
    assert r.headers.get("transfer-encoding") == "chunked"
    assert hashlib.sha256(r.content).hexdigest() == payload_sha256(size)


# ----------------------------------------------------------------------------- upstreams


def test_two_upstreams_both_serve_traffic(proxy_factory, backend, start_backend):
    second = start_backend("second")
    proxy = proxy_factory(upstreams=[backend.address, second.address])
    for i in range(20):
        resp = proxy.get(f"/inspect?i={i}")
        assert resp.status == 200, resp
    first_n = backend.stats()["heads"]
    second_n = second.stats()["heads"]
    assert first_n + second_n == 20
    assert first_n > 0 and second_n > 0, (first_n, second_n)


def test_dead_upstream_is_skipped_when_another_is_up(proxy_factory, backend):
    from helpers import free_port

    dead = f"127.0.0.1:{free_port()}"
    proxy = proxy_factory(upstreams=[dead, backend.address])
    for i in range(10):
        resp = proxy.request(build_request("POST", f"/echo?i={i}", body=b"x" * i))
        assert resp.status == 200, resp
        assert resp.body == b"x" * i
    assert backend.stats()["completed"] == 10


def test_httpx_client_many_requests_mixed(client):
    for i in range(50):
        body = payload(i * 997)
        r = client.post(f"/echo?i={i}", content=body)
        assert r.status_code == 200
        assert r.content == body
    r = client.get("/status/201")
    assert r.status_code == 201
