"""Request smuggling, end to end and against llhttp (invariant 7).

The corpus is ``smuggling_corpus.py``. One backend and one proxy serve the whole
module. Every attack is sent twice (in one write, and with its head byte by byte)
on a fresh connection and must get its 4xx with ``Connection: close``, the
connection closed, nothing of the ambiguous request at the backend (a request it
did receive never completes), and a normal request on another connection right
after still gets its own, correct answer. The look-alikes in ``NEUTRALIZED`` must be
forwarded with their one RFC 9112 reading, and the connection stays in sync.

To tell the requests of one case from every other, each case's ``/echo`` and
``/inspect`` targets are rewritten to ``/echo/cN`` and ``/inspect/cN`` (the
backend answers ``/inspect/...`` like ``/inspect``; ``/echo/...`` is a 404 that is
never reached). The smuggled request's path never changes, and the backend must
never see it.
"""

from __future__ import annotations

import conftest
import pytest
import smuggling_corpus as sc
from fault_support import Stack
from helpers import RawConn

REJECTED_BY_PROXY_NOT_PARSER = {405}  # CONNECT: the parser accepts, the proxy refuses


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("smuggling"))
    yield s
    stats = s.stats()
    problems = s.stop()
    assert stats["paths"].get(sc.SMUGGLED_PATH, 0) == 0, f"a smuggled request got through: {stats}"
    assert stats["parse_errors"] == 0, stats
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def core():
    from fastpause import _core

    return _core


def tagged(data: bytes, tag: str) -> tuple[bytes, list[str]]:
    """Rewrite the case's targets to carry ``tag``; returns the data and the tagged paths."""
    t = tag.encode()
    out = data.replace(b"/echo", b"/echo/" + t).replace(b"/inspect", b"/inspect/" + t)
    return out, [f"/echo/{tag}", f"/inspect/{tag}"]


def send_all(conn: RawConn, data: bytes, bytewise_head: bool) -> None:
    """Send ``data``; with ``bytewise_head``, its first 2 KiB one byte per send. The proxy
    may close before everything went out: that is fine, its answer is already on the way."""
    try:
        if bytewise_head:
            cut = min(len(data), 2048)
            for i in range(cut):
                conn.send(data[i : i + 1])
            data = data[cut:]
        if data:
            conn.send(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def check_follow_up(stack: Stack, tag: str) -> None:
    """A normal request on another connection is answered, and answered correctly."""
    target = f"/inspect/{tag}-after?x=1"
    with RawConn(stack.port) as conn:
        conn.send(f"GET {target} HTTP/1.1\r\nHost: example.test\r\n\r\n".encode())
        resp = conn.read_response()
    assert resp.status == 200, resp
    info = resp.json()
    assert info["target"] == target, info
    assert info["body_length"] == 0, info


def path_hits(stats: dict, paths: list[str]) -> int:
    return sum(stats["paths"].get(p, 0) for p in paths)


# --------------------------------------------------------------------------- end to end


def _case_ids(cases):
    return [c.id for c in cases]


@pytest.mark.parametrize("delivery", ["whole", "bytewise"])
@pytest.mark.parametrize("attack", sc.ATTACKS, ids=_case_ids(sc.ATTACKS))
def test_attack_rejected_end_to_end(stack, attack, delivery):
    tag = f"a{sc.ATTACKS.index(attack)}{delivery[0]}"
    data, paths = tagged(attack.data, tag)
    before = stack.stats()
    with RawConn(stack.port) as conn:
        send_all(conn, data, delivery == "bytewise")
        for i in range(attack.ok_before):
            ok = conn.read_response()
            assert ok.status == 200, f"pipelined request {i} in front of the attack: {ok!r}"
            assert not ok.closes, ok
        resp = conn.read_response()
        assert resp.status == attack.status, resp
        assert resp.closes, f"no Connection: close: {resp!r}"
        assert (resp.get("content-type") or "").startswith("text/plain"), resp
        assert resp.body and b"Traceback" not in resp.body, resp
        assert conn.is_closed_by_peer(), "the proxy left the connection open"
    after = stack.stats()
    hits = path_hits(after, paths) - path_hits(before, paths)
    if attack.stage == sc.HEAD_STAGE:
        assert hits == attack.ok_before, f"the backend saw the rejected request: {after['paths']}"
    else:
        assert hits in (attack.ok_before, attack.ok_before + 1), after["paths"]
    completed = after["completed"] - before["completed"]
    assert completed == attack.ok_before, (
        f"the backend received {completed} complete requests, expected {attack.ok_before}"
    )
    assert after["paths"].get(sc.SMUGGLED_PATH, 0) == 0, f"smuggled request arrived: {after}"
    assert after["parse_errors"] == 0
    check_follow_up(stack, tag)


@pytest.mark.parametrize("case", sc.NEUTRALIZED, ids=_case_ids(sc.NEUTRALIZED))
def test_neutralized_forwarded_with_one_reading(stack, case):
    tag = f"n{sc.NEUTRALIZED.index(case)}"
    data, paths = tagged(case.data, tag)
    before = stack.stats()
    with RawConn(stack.port) as conn:
        conn.send(data)
        resp = conn.read_response()
        assert resp.status == 200, resp
        info = resp.json()
        assert info["target"].split("?")[0] in paths, info
        assert info["body_length"] == len(case.body), info
        assert info["body_sha256"] == sc.sha256(case.body), info
        names = [n.lower() for n, _ in info["headers"]]
        assert names.count("host") == 1, info
        if b"\r\nHost:" in sc.first_head(case.data) or b" http://" in case.data:
            host = dict((n.lower(), v) for n, v in info["headers"])["host"]
            assert host == "example.test", info
        assert names.count("content-length") + names.count("transfer-encoding") <= 1, info
        assert not set(case.absent) & set(names), f"{case.absent} must not be forwarded: {info}"
        if case.body:
            assert names.count("content-length") + names.count("transfer-encoding") == 1, info
        # none of these is a real upgrade: nothing may ask the backend to switch protocols
        assert "upgrade" not in names, info
        assert "connection" not in names, info
        if case.keeps:
            assert not resp.closes, resp
            target = f"/inspect/{tag}-same"
            conn.send(f"GET {target} HTTP/1.1\r\nHost: example.test\r\n\r\n".encode())
            follow = conn.read_response()
            assert follow.status == 200, follow
            assert follow.json()["target"] == target, follow
        else:
            assert resp.closes, resp
            assert conn.is_closed_by_peer()
    after = stack.stats()
    assert path_hits(after, paths) - path_hits(before, paths) == 1, after["paths"]
    assert after["paths"].get(sc.SMUGGLED_PATH, 0) == 0, after
    assert after["parse_errors"] == 0
    check_follow_up(stack, tag)


# --------------------------------------------------------------------------- vs llhttp


def _fp(core, head: bytes):
    try:
        return ("accept", core.parse_request_head(head))
    except core.HeadError as e:
        return ("reject", e.status, e.reason)


def _same_reading(fp_result, ll: sc.LlhttpResult) -> None:
    method, target, version, headers = fp_result
    headers = [(bytes(n), bytes(v)) for n, v in headers]
    assert ll.head == (method, target, tuple(version), headers), (fp_result, ll.head)


@pytest.mark.parametrize("attack", sc.ATTACKS, ids=_case_ids(sc.ATTACKS))
def test_attack_differential(core, attack):
    tail = attack.attack
    head = sc.first_head(tail) or tail
    fp = _fp(core, head)
    ll = sc.llhttp_run(tail)
    if attack.stage == sc.BODY_STAGE or attack.status in REJECTED_BY_PROXY_NOT_PARSER:
        # the head is fine; the proxy reads the same head llhttp does
        assert fp[0] == "accept", fp
        assert ll.head is not None, ll
        _same_reading(fp[1], ll)
        if attack.stage == sc.BODY_STAGE:
            assert sc.framing_of(fp[1][3]) == ("chunked",)
            assert ll.chunked or ll.error, ll
            if ll.body_complete and ll.error is None:
                assert attack.id in sc.LLHTTP_ACCEPTS_BODY, (
                    f"llhttp reads this chunked body to the end (body {ll.body!r}, "
                    f"{ll.messages} message(s)); fastpause rejects it: list it"
                )
            else:
                assert attack.id not in sc.LLHTTP_ACCEPTS_BODY, ll
        return
    assert fp[0] == "reject", f"the parser accepts {head!r}: {fp}"
    assert fp[1] == attack.status, fp
    if ll.head is not None:
        assert attack.id in sc.STRICTER_THAN_LLHTTP, (
            f"llhttp accepts this head ({ll.head!r}, error {ll.error}); fastpause "
            f"rejects it ({fp}): list it as a deliberate strictness difference"
        )
    else:
        assert attack.id not in sc.STRICTER_THAN_LLHTTP, ll


@pytest.mark.parametrize("case", sc.NEUTRALIZED, ids=_case_ids(sc.NEUTRALIZED))
def test_neutral_differential(core, case):
    data = case.data.lstrip(b"\r\n")
    head = sc.first_head(data)
    fp = _fp(core, head)
    assert fp[0] == "accept", fp
    framing = sc.framing_of(fp[1][3])
    if framing[0] == "length":
        assert framing[1] == len(case.body)
    ll = sc.llhttp_run(data)
    if ll.head is None or (ll.error is not None and not ll.body_complete):
        assert case.id in sc.LLHTTP_REJECTS_NEUTRAL, f"llhttp: {ll}"
        return
    assert case.id not in sc.LLHTTP_REJECTS_NEUTRAL, ll
    _same_reading(fp[1], ll)
    if case.id in sc.HTTPTOOLS_DIFFERENT_READING:
        assert ll.body != case.body, "httptools now reads this body: drop the exception"
        return
    assert ll.body_complete, ll
    assert ll.chunked == (framing == ("chunked",)), (ll, framing)
    assert ll.body == case.body, ll


def test_corpus_size():
    assert len(sc.ATTACKS) >= 100
    assert len({a.id for a in sc.ATTACKS}) == len(sc.ATTACKS)


# --------------------------------------------------------------------------- Host confusion

PUBLIC, ADMIN, HOST_CASES = sc.PUBLIC, sc.ADMIN, sc.HOST_CASES


@pytest.fixture(scope="module")
def hosts_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hosts")
    admin = conftest.Backend(tmp, "admin-backend")
    s = Stack(
        tmp,
        routes=[
            {"name": "public", "hosts": ["public.test"], "upstreams": ["BACKEND"]},
            {"name": "admin", "hosts": ["admin.test"], "upstreams": [admin.address]},
        ],
    )
    yield s, {PUBLIC: s.backend, ADMIN: admin}
    problems = s.stop()
    admin_stats = admin.stats()
    admin.kill()
    assert admin_stats["parse_errors"] == 0
    assert not problems, "\n".join(problems)


def _routed_to(backends: dict, path: str) -> list[str]:
    return [name for name, b in backends.items() if b.stats()["paths"].get(path)]


@pytest.mark.parametrize(
    ("raw", "route", "status", "host"), [c[1:] for c in HOST_CASES], ids=[c[0] for c in HOST_CASES]
)
def test_host_routing_is_consistent(hosts_stack, raw, route, status, host):
    """The route that answers and the Host its backend sees always agree: the
    absolute-form authority wins over Host for both (RFC 9112 3.2.2), the client's
    X-Forwarded-Host is not trusted, and an ambiguous Host is refused."""
    stack, backends = hosts_stack
    tag = f"h{HOST_CASES.index(next(c for c in HOST_CASES if c[1] == raw))}"
    path = f"/inspect/{tag}"
    with RawConn(stack.port) as conn:
        conn.send(raw.replace(b"{t}", tag.encode()))
        resp = conn.read_response()
    if status is None:  # a legal but odd host: either refused or no route
        assert resp.status in (400, 404), resp
    else:
        assert resp.status == status, resp
    if route is None:
        assert _routed_to(backends, path) == [], "a refused request reached a backend"
        return
    assert _routed_to(backends, path) == [route]
    info = resp.json()
    headers = [(n.lower(), v) for n, v in info["headers"]]
    assert [v for n, v in headers if n == "host"] == [host], info
    xfh = [v for n, v in headers if n == "x-forwarded-host"]
    assert xfh == [host], f"X-Forwarded-Host is not the request's own host: {info}"


def test_each_pipelined_request_is_routed_on_its_own(hosts_stack):
    """Routing is per request, not per connection: pipelined requests for two hosts on
    one keep-alive connection each reach their own route."""
    stack, backends = hosts_stack
    reqs = [
        ("public.test", "/inspect/pipe-a"),
        ("admin.test", "/inspect/pipe-b"),
        ("public.test", "/inspect/pipe-c"),
        ("admin.test", "/inspect/pipe-d"),
    ]
    with RawConn(stack.port) as conn:
        conn.send(b"".join(f"GET {p} HTTP/1.1\r\nHost: {h}\r\n\r\n".encode() for h, p in reqs))
        for _, p in reqs:
            resp = conn.read_response()
            assert resp.status == 200 and resp.json()["target"] == p, resp
    for h, p in reqs:
        assert _routed_to(backends, p) == [PUBLIC if h == "public.test" else ADMIN], p
