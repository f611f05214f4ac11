"""Request paths in normal form (``fastpause._core.normalize_path`` and the parser).

Routing compares a route's ``path_prefix`` with the request path in normal form, and
that form is what the upstream receives (end to end: ``test_routing.py``). Here: a
table of readings, and a hypothesis property against a reference written from RFC
3986 (the string algorithm of §5.2.4, not the core's segment stack), with the
refusals the proxy adds. The parser refuses (400) exactly the paths the normaliser
refuses.
"""

from __future__ import annotations

import re

import http_reference as ref
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpause import _core

NORMAL = [
    (b"/", b"/"),
    (b"/index.html", b"/index.html"),
    (b"/a/b/../c", b"/a/c"),
    (b"/a/./b", b"/a/b"),
    (b"/a/b/..", b"/a/"),
    (b"/a/.", b"/a/"),
    (b"/a/..", b"/"),
    (b"/.", b"/"),
    (b"/a/%2e%2E/b", b"/b"),
    (b"/a/.%2e/b", b"/b"),
    (b"/a/%2e/b", b"/a/b"),
    (b"/a/...", b"/a/..."),
    (b"/a/..x/.x/x.", b"/a/..x/.x/x."),
    (b"//a/../b", b"//b"),
    (b"/a//../b", b"/a/b"),
    (b"/%41%62%7E%2D%5f%2e", b"/Ab~-_."),
    (b"/caf%c3%a9", b"/caf%C3%A9"),
    (b"/a%2fb", b"/a%2Fb"),
    (b"/a%2f/../b", b"/b"),
    (b"/a;b=c/d", b"/a;b=c/d"),
    (b"/a/../b?x=/../..&y=%zz#", b"/b?x=/../..&y=%zz#"),
    (b"/?a/../b", b"/?a/../b"),
]

REFUSED = [
    (b"/..", "climbs above the root"),
    (b"/../a", "climbs above the root"),
    (b"/a/../..", "climbs above the root"),
    (b"/%2e%2e", "climbs above the root"),
    (b"/a/%2E./../b", "climbs above the root"),
    (b"/a/..%2fb", "hidden behind"),
    (b"/a/..%2Fb", "hidden behind"),
    (b"/a/b%2f..", "hidden behind"),
    (b"/a/..\\b", "hidden behind"),
    (b"/a/x\\.", "hidden behind"),
    (b"/a/..%5cb", "hidden behind"),
    (b"/a/..;", "hidden behind"),
    (b"/a/..;v=1/b", "hidden behind"),
    (b"/a/.;/b", "hidden behind"),
    (b"/a/%2e%2e;x", "hidden behind"),
    (b"/a/%zz", "percent-encoding"),
    (b"/a/%2", "percent-encoding"),
    (b"/a/%", "percent-encoding"),
    (b"/a/%/b", "percent-encoding"),
    (b"/a/%2?x", "percent-encoding"),
]


@pytest.mark.parametrize(("path", "normal"), NORMAL)
def test_normal_form(path, normal):
    assert _core.normalize_path(path) == normal
    assert _core.normalize_path(normal) == normal


@pytest.mark.parametrize(("path", "why"), REFUSED)
def test_refused(path, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        _core.normalize_path(path)
    with pytest.raises(_core.HeadError) as caught:
        _core.parse_request_head(head(path))
    assert caught.value.status == 400
    assert why in caught.value.reason


def test_absolute_form_path_is_normalised_like_origin_form():
    with pytest.raises(_core.HeadError) as caught:
        _core.parse_request_head(head(b"http://example.test/a/../../b"))
    assert "climbs above the root" in caught.value.reason
    _core.parse_request_head(head(b"http://ex.ample.test:80?q=/../.."))  # no path: nothing to do


def test_a_fragment_is_refused():
    with pytest.raises(_core.HeadError) as caught:
        _core.parse_request_head(head(b"/a#b"))
    assert caught.value.status == 400


def head(target: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: example.test\r\n\r\n"


_PIECES = [b"a", b"b", b".", b"..", b"%2e", b"%2E", b"%2f", b"%5C", b"\\", b";", b"x=1", b"%41"]
_PIECES += [b"%7e", b"%c3%a9", b"%", b"%z", b""]
segments = st.lists(st.sampled_from(_PIECES), max_size=4).map(b"".join)
paths = st.lists(segments, min_size=1, max_size=6).map(lambda s: b"/" + b"/".join(s))
queries = st.sampled_from([b"", b"?", b"?q=/../%zz", b"?a=b"])


@settings(max_examples=2000, deadline=None)
@given(paths, queries)
def test_normalize_path_matches_the_reference(path, query):
    expected = ref.normal_target(path + query)
    try:
        got = _core.normalize_path(path + query)
    except ValueError:
        got = None
    assert got == expected, (path + query, got, expected)
    if got is not None:
        assert _core.normalize_path(got) == got  # idempotent
    try:
        _core.parse_request_head(head(path + query))
        accepted = True
    except _core.HeadError as error:
        assert error.status == 400
        accepted = False
    assert accepted == (expected is not None), path + query
