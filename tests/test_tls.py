"""HTTPS listeners, end to end: certificates picked by SNI (wildcards, a default, an
RSA and an ECDSA certificate for one name), TLS versions and ALPN, certificates
renewed by a reload without dropping connections, config mistakes, holding and
re-routing on TLS connections, and hostile handshakes.

Certificates come from a test CA (``trustme``); clients are Python's ``ssl`` over
real sockets, as a browser's TLS stack would talk to the proxy.
"""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from deploy_support import deploy_cli, edit_config, fastpause, proxy_output, wait_for
from helpers import RawConn, build_request, free_port, request
from hold_support import Pending
from tls_support import client_context, get, https_port, issue, served_serial, tls_conn, tls_top

pytest_plugins = ["hold_support", "deploy_support", "tls_support"]

WAIT = 30.0


# --------------------------------------------------------------------------- certificates


@pytest.mark.workers_variants
def test_sni_picks_the_certificate_of_the_name(proxy_factory, ca, pairs):
    proxy = proxy_factory(top=tls_top(pairs))
    port = https_port(proxy)
    context = client_context(ca)
    for name, pair in [
        ("app.test", "app"),
        ("www.app.test", "app"),
        ("a.wild.test", "wild"),
        ("other.test", "other"),
    ]:
        with tls_conn(port, context, name) as conn:  # verified against the name
            assert served_serial(conn) == pairs[pair].serial, name
            assert conn.sock.selected_alpn_protocol() is None  # the client offered none
            resp = get(conn, "/inspect?tls", host=name)
            assert resp.status == 200, resp
            headers = {k.lower(): v for k, v in resp.json()["headers"]}
            assert headers["x-forwarded-proto"] == "https", headers
    resp = proxy.get("/inspect?plain")  # the plain listener beside it
    headers = {k.lower(): v for k, v in resp.json()["headers"]}
    assert headers["x-forwarded-proto"] == "http", headers


def test_without_sni_or_for_an_unknown_name_the_default_certificate(proxy_factory, ca, pairs):
    """The default is the certificate marked ``default`` (else the first): what NGINX's
    default_server and HAProxy's first crt do, rather than a handshake alert."""
    top = tls_top(pairs)
    top["certificates"] = [
        pairs["app"].entry(),
        pairs["wild"].entry(),
        pairs["other"].entry(default=True),
    ]
    proxy = proxy_factory(top=top)
    port = https_port(proxy)
    unverified = client_context(ca, check_hostname=False, verify_mode=ssl.CERT_NONE)
    for name in (None, "unknown.test", "wild.test"):  # "*.wild.test" is not "wild.test"
        with tls_conn(port, unverified, name) as conn:
            assert served_serial(conn) == pairs["other"].serial, name
            assert get(conn, "/inspect").status == 200


def test_an_rsa_and_an_ecdsa_certificate_for_one_name(proxy_factory, ca, tmp_path, pairs):
    """Each client gets the certificate its cipher suites can use."""
    dual_rsa = issue(ca, tmp_path, "dual-rsa", "dual.test", rsa_key=True)
    dual_ec = issue(ca, tmp_path, "dual-ec", "dual.test")
    top = tls_top(pairs)
    top["certificates"] = [dual_rsa.entry(), dual_ec.entry()]
    proxy = proxy_factory(top=top)
    port = https_port(proxy)
    for cipher, key_type in [
        ("ECDHE-RSA-AES128-GCM-SHA256", rsa.RSAPublicKey),
        ("ECDHE-ECDSA-AES128-GCM-SHA256", ec.EllipticCurvePublicKey),
    ]:
        context = client_context(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
        context.set_ciphers(cipher)
        with tls_conn(port, context, "dual.test") as conn:
            der = conn.sock.getpeercert(binary_form=True)
            assert isinstance(x509.load_der_x509_certificate(der).public_key(), key_type)
            assert get(conn, "/inspect", host="dual.test").status == 200


def test_tls_versions_and_alpn(proxy_factory, ca, pairs):
    proxy = proxy_factory(top=tls_top(pairs, tls_min_version="1.3"))
    port = https_port(proxy)
    old = client_context(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        tls_conn(port, old, "app.test")
    context = client_context(ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with tls_conn(port, context, "app.test") as conn:
        assert conn.sock.version() == "TLSv1.3"
        assert conn.sock.selected_alpn_protocol() == "http/1.1"  # never h2: HTTP/1.1 only
        assert get(conn, "/inspect").status == 200


# --------------------------------------------------------------------------- reload


def test_reload_serves_renewed_certificates_and_keeps_open_connections(
    hold_proxy, ca, tmp_path, pairs
):
    proxy = hold_proxy(top=tls_top(pairs))
    port = https_port(proxy)
    context = client_context(ca)
    kept = tls_conn(port, context, "app.test")
    assert get(kept, "/inspect?before").status == 200

    renewed = issue(ca, tmp_path, "renewed", "app.test", "www.app.test")
    os.replace(renewed.cert, pairs["app"].cert)  # a renewal rewrites the same files
    os.replace(renewed.key, pairs["app"].key)
    assert fastpause("reload", "--admin", proxy.admin.spec).returncode == 0, proxy.describe()

    assert get(kept, "/inspect?after").status == 200  # the open connection goes on
    kept.close()
    with tls_conn(port, context, "app.test") as conn:
        assert served_serial(conn) == renewed.serial


def test_a_reload_with_a_broken_certificate_changes_nothing(hold_proxy, ca, tmp_path, pairs):
    proxy = hold_proxy(top=tls_top(pairs))
    port = https_port(proxy)
    stranger = issue(ca, tmp_path, "stranger", "app.test")
    pairs["app"].key.write_bytes(stranger.key.read_bytes())  # the key of another cert

    done = fastpause("reload", "--admin", proxy.admin.spec)
    assert done.returncode != 0
    assert f"{pairs['app'].key} is not the private key of the certificate in" in done.stderr
    assert "certificates[0].key" in done.stderr, done.stderr
    with tls_conn(port, client_context(ca), "app.test") as conn:
        assert served_serial(conn) == pairs["app"].serial  # still the one loaded before
        assert get(conn, "/inspect").status == 200


# --------------------------------------------------------------------------- config errors


def _validate(tmp_path: Path, text: str):
    config = tmp_path / "tls.toml"
    config.write_text(text + '\n[[routes]]\nname = "app"\nupstreams = ["127.0.0.1:9"]\n')
    return config, fastpause("validate", str(config))


def _certificate_config(cert: Path, key: Path, extra: str = "") -> str:
    return (
        f'listen = ["https://127.0.0.1:8443"]\n{extra}\n'
        f'[[certificates]]\ncert = "{cert}"\nkey = "{key}"\n'
    )


def test_config_errors_name_the_file_and_the_key(ca, tmp_path, pairs):
    app, other = pairs["app"], pairs["other"]
    missing = tmp_path / "missing.pem"
    cases = [
        (_certificate_config(missing, app.key), "certificates[0].cert", f"cannot read {missing}"),
        (
            _certificate_config(app.cert, other.key),
            "certificates[0].key",
            f"{other.key} is not the private key of the certificate in {app.cert}",
        ),
        (_certificate_config(app.key, app.key), "certificates[0].cert", "holds no PEM cert"),
        (_certificate_config(app.cert, app.cert), "certificates[0].key", "holds no PEM private"),
        (
            'listen = ["127.0.0.1:8080", "https://127.0.0.1:8443"]',
            "listen[1]",
            "https://127.0.0.1:8443 needs a certificate",
        ),
        (
            _certificate_config(app.cert, app.key, 'tls_min_version = "1.1"'),
            "tls_min_version",
            "expected '1.2' or '1.3'",
        ),
        ('listen = ["ftp://127.0.0.1:21"]', "listen[0]", "scheme must be http:// or https://"),
        (
            'listen = ["https://127.0.0.1:8443", "127.0.0.1:8443"]',
            "listen[1]",
            "duplicate address",
        ),
    ]
    for text, where, problem in cases:
        config, done = _validate(tmp_path, text)
        assert done.returncode != 0, text
        assert f"{config}: {where}: " in done.stderr, (text, done.stderr)
        assert problem in done.stderr, (text, done.stderr)

    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        ca.issue_cert("app.test").private_key_pem.bytes().replace(b"PRIVATE KEY", b"ENCRYPTED")
    )
    _, done = _validate(tmp_path, _certificate_config(app.cert, encrypted))
    assert done.returncode != 0 and "certificates[0].key" in done.stderr, done.stderr

    twice = _certificate_config(app.cert, app.key) + (
        f'default = true\n[[certificates]]\ncert = "{other.cert}"\nkey = "{other.key}"\n'
        "default = true\n"
    )
    config, done = _validate(tmp_path, twice)
    assert f"{config}: certificates[1].default: only one certificate" in done.stderr

    done = fastpause("run", "--listen", "https://127.0.0.1:0")
    assert done.returncode != 0
    assert "--listen: an https:// listener needs a certificate" in done.stderr, done.stderr


# --------------------------------------------------------------------------- holding


def https_request(port: int, context: ssl.SSLContext, raw: bytes) -> Pending:
    def send():
        with tls_conn(port, context, "app.test") as conn:
            conn.send(raw)
            return conn.read_response()

    return Pending(send)


@pytest.mark.workers_variants
def test_a_held_https_request_goes_to_the_backend_named_by_the_reload(
    hold_proxy, late_backend, ca, pairs
):
    """The seed scenario over HTTPS: the route's backend is down, a request on a TLS
    connection is held, a reload names another port, a backend starts there."""
    port_a, port_b = free_port(), free_port()
    proxy = hold_proxy(
        route={"try_duration": "120s", "try_interval": "100ms"},
        upstreams=[f"127.0.0.1:{port_a}"],
        top=tls_top(pairs),
    )
    held = https_request(https_port(proxy), client_context(ca), build_request("GET", "/inspect?s"))
    proxy.admin.wait_held(1)
    edit_config(proxy, route={"upstreams": [f"127.0.0.1:{port_b}"]})
    assert fastpause("reload", "--admin", proxy.admin.spec).returncode == 0
    late_backend(port_b)
    resp = held.result(timeout=WAIT)
    assert resp.status == 200, resp
    assert resp.json()["target"] == "/inspect?s"
    proxy.admin.wait_held(0)


def test_pause_and_resume_hold_https_requests_in_order(hold_proxy, backend, ca, pairs):
    proxy = hold_proxy(top=tls_top(pairs))
    port, context = https_port(proxy), client_context(ca)
    proxy.admin.pause()
    pending = []
    for index in range(3):
        pending.append(https_request(port, context, build_request("GET", f"/inspect?n={index}")))
        proxy.admin.wait_held(index + 1)
    proxy.admin.resume()
    for index, one in enumerate(pending):
        resp = one.result(timeout=WAIT)
        assert resp.status == 200 and resp.json()["target"] == f"/inspect?n={index}", resp


# --------------------------------------------------------------------------- hostile input


def client_hello(ca: trustme.CA) -> bytes:
    """The first flight of a real TLS client for app.test."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(ca).wrap_bio(incoming, outgoing, server_hostname="app.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def closed_by_peer(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (the socket's timeout bounds it)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_plain_http_to_the_https_port_is_closed(proxy_factory, ca, pairs):
    proxy = proxy_factory(top=tls_top(pairs))
    port = https_port(proxy)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(build_request("GET", "/inspect"))
        assert not closed_by_peer(sock).startswith(b"HTTP/")  # an alert at most
    with tls_conn(port, client_context(ca), "app.test") as conn:  # serving on
        assert get(conn, "/inspect").status == 200


def test_tls_to_the_plain_port_gets_400(proxy_factory, ca, pairs):
    proxy = proxy_factory(top=tls_top(pairs))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT) as sock:
        sock.sendall(client_hello(ca))
        assert closed_by_peer(sock).startswith(b"HTTP/1.1 400 ")
    assert proxy.get("/inspect").status == 200


def test_a_stalled_handshake_is_closed_at_the_handshake_timeout(proxy_factory, ca, pairs):
    proxy = proxy_factory(top=tls_top(pairs, tls_handshake_timeout="1s"))
    port = https_port(proxy)
    hello = client_hello(ca)
    for sent in (b"", hello[: len(hello) // 2]):  # nothing, and half a ClientHello
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(sent)
            assert closed_by_peer(sock) == b""


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_abandoned_handshakes_leave_nothing_behind(proxy_factory, ca, pairs):
    """10,000 handshakes started (a truncated ClientHello) and abandoned: the proxy's
    descriptors go back to where they were, its memory stays bounded, it serves on."""
    proxy = proxy_factory(top=tls_top(pairs))
    port = https_port(proxy)
    with tls_conn(port, client_context(ca), "app.test") as conn:  # warm: contexts built
        assert get(conn, "/inspect").status == 200
    baseline_fds, baseline_rss = open_fds(proxy.pid), proxy.rss_kib()
    hello = client_hello(ca)[:100]
    for _ in range(100):
        batch = [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(100)]
        for sock in batch:
            sock.sendall(hello)
        for sock in batch:
            sock.close()
    wait_for(
        lambda: open_fds(proxy.pid) <= baseline_fds,
        what=f"the proxy's descriptors back to {baseline_fds}",
    )
    assert proxy.rss_kib() - baseline_rss < 64 * 1024, "64 MiB kept after the handshakes"
    with tls_conn(port, client_context(ca), "app.test") as conn:
        assert get(conn, "/inspect").status == 200
    assert "Traceback" not in proxy.stderr() + proxy_output(proxy)


# --------------------------------------------------------------------------- redirects, HSTS


def test_redirect_to_https_and_hsts(proxy_factory, backend, ca, pairs):
    """``redirect_https``: GET and HEAD get 301, other methods 308 (the client repeats
    the method and body), to the same host and target on the HTTPS port; HTTPS
    responses carry the route's HSTS field, plain ones never do."""
    tls_port = free_port()
    top = tls_top(pairs)
    top["listen"] = [top["listen"][0], f"https://127.0.0.1:{tls_port}"]
    hsts = "max-age=31536000; includeSubDomains"
    proxy = proxy_factory(top=top, route={"redirect_https": True, "hsts": hsts})
    for method, status in [("GET", 301), ("HEAD", 301), ("POST", 308), ("DELETE", 308)]:
        body = b"x=1" if method == "POST" else b""
        raw = build_request(method, "/inspect?a=1&b=2", host="app.test:80", body=body)
        resp = request(proxy.port, raw, method=method)
        assert resp.status == status, (method, resp)
        assert resp.get("Location") == f"https://app.test:{tls_port}/inspect?a=1&b=2"
        assert resp.get("Strict-Transport-Security") is None
    assert proxy.request(build_request("GET", "/", host=None)).status == 400  # no Host
    assert backend.stats()["heads"] == 0, "a redirected request reached the backend"

    with tls_conn(tls_port, client_context(ca), "app.test") as conn:
        resp = get(conn, "/inspect?secure")
        assert resp.status == 200, resp
        assert resp.get("Strict-Transport-Security") == hsts


def test_redirect_without_an_https_port_is_a_config_error(tmp_path):
    config = tmp_path / "redirect.toml"
    config.write_text(
        'listen = ["127.0.0.1:8080"]\n[[routes]]\nname = "app"\n'
        'upstreams = ["127.0.0.1:9"]\nredirect_https = true\n'
    )
    done = fastpause("validate", str(config))
    assert done.returncode != 0
    assert f"{config}: routes[0].redirect_https: no https:// listener" in done.stderr
    config.write_text(config.read_text() + 'hsts = "1 year"\n')
    assert "routes[0].hsts: invalid value '1 year'" in fastpause("validate", str(config)).stderr


# --------------------------------------------------------------------------- HTTPS upstreams


def test_https_upstream_verified_against_a_ca(proxy_factory, tls_backend):
    """The upstream's certificate is checked against ``ca`` for ``tls_server_name``
    (the upstream is dialed by IP); requests reuse the pooled TLS connection."""
    proxy = proxy_factory(
        upstreams=[f"https://127.0.0.1:{tls_backend.port}"],
        route={"ca": str(tls_backend.ca_file), "tls_server_name": "backend.test"},
    )
    with proxy.conn() as conn:
        for index in range(3):
            conn.send(build_request("GET", f"/inspect?n={index}"))
            resp = conn.read_response()
            assert resp.status == 200, resp
            assert resp.json()["target"] == f"/inspect?n={index}"
    assert "tls_verify" not in proxy.stderr()


def test_an_https_upstream_whose_certificate_does_not_match_is_not_used(proxy_factory, tls_backend):
    """A certificate for another name fails the connection like a refused connect (502
    here, with holding off) naming the reason; ``tls_verify = false`` accepts it and
    says so loudly at start."""
    upstreams = [f"https://127.0.0.1:{tls_backend.port}"]
    route = {"ca": str(tls_backend.ca_file), "tls_server_name": "other.test", "try_duration": "0s"}
    proxy = proxy_factory(upstreams=upstreams, route=route)
    resp = proxy.get("/inspect")
    assert resp.status == 502, resp
    assert "certificate verify failed" in resp.text.lower(), resp.text

    lenient = proxy_factory(upstreams=upstreams, route={**route, "tls_verify": False})
    assert lenient.get("/inspect").status == 200
    assert "route app: tls_verify = false: the certificates of its https:// upstreams are NOT" in (
        lenient.stderr()
    ), lenient.stderr()


@pytest.mark.parametrize("name, healthy", [("backend.test", True), ("other.test", False)])
def test_health_checks_reach_https_upstreams(hold_proxy, tls_backend, name, healthy):
    """Checks dial the upstream as requests do: a certificate for another name fails
    them (two in a row: unhealthy), the right one passes (the first pass counts)."""
    address = f"https://127.0.0.1:{tls_backend.port}"
    proxy = hold_proxy(
        upstreams=[address],
        route={
            "ca": str(tls_backend.ca_file),
            "tls_server_name": name,
            "health_path": "/inspect",
            "health_interval": "100ms",
        },
    )
    proxy.admin.wait_until(
        lambda r: (
            r["upstreams"][0]["address"] == address
            and r["upstreams"][0]["healthy"] is healthy
            and (healthy or "certificate" in proxy_output(proxy) + proxy.stderr())
        ),
        f"the check to say healthy={healthy}",
    )


def test_ca_errors_name_the_file(tmp_path, pairs):
    for content, problem in [(None, "cannot read"), (b"not a certificate", "holds no PEM cert")]:
        ca = tmp_path / "bad-ca.pem"
        ca.unlink(missing_ok=True)
        if content is not None:
            ca.write_bytes(content)
        config = tmp_path / "upstream.toml"
        config.write_text(
            'listen = ["127.0.0.1:8080"]\n[[routes]]\nname = "app"\n'
            f'upstreams = ["https://127.0.0.1:9443"]\nca = "{ca}"\n'
        )
        done = fastpause("validate", str(config))
        assert done.returncode != 0
        assert f"{config}: routes[0].ca: {problem}" in done.stderr.replace(f"{ca} ", ""), (
            done.stderr
        )


def test_a_returning_client_resumes_its_session(proxy_factory, ca, pairs):
    """Session tickets: a client that comes back with its ticket skips the full
    handshake (TLS 1.2 and 1.3). One process: a ticket is sealed with that process's
    key (see the README about workers)."""
    proxy = proxy_factory(top=tls_top(pairs))
    port = https_port(proxy)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = client_context(ca, minimum_version=version, maximum_version=version)
        with tls_conn(port, context, "app.test") as first:
            assert get(first, "/inspect").status == 200  # TLS 1.3 tickets come after it
            session = first.sock.session
        conn = RawConn(port, timeout=WAIT)
        conn.sock = context.wrap_socket(conn.sock, server_hostname="app.test", session=session)
        with conn:
            assert conn.sock.session_reused, version
            assert get(conn, "/inspect").status == 200


def test_a_deploy_sends_held_https_requests_to_the_new_target(
    hold_proxy, identity_backend, ca, pairs
):
    """Pause, hold requests on TLS connections, deploy to B, resume: B answers them,
    as on plain connections (test_deploy)."""
    a, b = identity_backend("A"), identity_backend("B")
    proxy = hold_proxy(upstreams=[a.address], top=tls_top(pairs))
    port, context = https_port(proxy), client_context(ca)
    proxy.admin.pause()
    pending = []
    for index in range(3):
        raw = build_request("GET", f"/held/{index}", host="app.test")
        pending.append(https_request(port, context, raw))
        proxy.admin.wait_held(index + 1)
    done = deploy_cli(proxy.admin, "app", b.address, health_path="/health")
    assert done.returncode == 0, done.stderr
    proxy.admin.resume()
    for index, one in enumerate(pending):
        resp = one.result(timeout=WAIT)
        assert (resp.status, resp.get("X-Backend")) == (200, "B"), resp
        assert resp.json()["target"] == f"/held/{index}"
    assert a.requests() == 0
