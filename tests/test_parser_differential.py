"""Differential tests: fastpause's request-head parser vs httptools (llhttp).

See ``parser_corpus.py`` for the corpus and the two documented divergence
tables. The llhttp-only checks (``test_llhttp_*``) run even when the Cython core
is not built; everything that needs fastpause imports the *installed*
``fastpause._core`` through the ``core`` fixture and errors if it is missing.
"""

from __future__ import annotations

import parser_corpus as pc
import pytest
from parser_corpus import REJECT_STATUSES


@pytest.fixture(scope="module")
def core():
    try:
        from fastpause import _core
    except ImportError as exc:  # pragma: no cover - depends on the build
        pytest.fail(f"fastpause._core is not built/installed: {exc!r}")
    return _core


def _ids(cases):
    return [c.id for c in cases]


def _check_head_error(core, data, kwargs, status):
    with pytest.raises(core.HeadError) as info:
        core.parse_request_head(data, **kwargs)
    err = info.value
    assert isinstance(err.status, int)
    assert isinstance(err.reason, str)
    assert err.reason
    assert err.status == status, (
        f"input {data[:300]!r}: expected status {status}, got {err.status} ({err.reason!r})"
    )


def _check_result_types(result):
    method, target, version, headers = result
    assert type(method) is bytes
    assert type(target) is bytes
    assert all(type(x) is int for x in version)
    for name, value in headers:
        assert type(name) is bytes
        assert type(value) is bytes


# ---------------------------------------------------------------------------
# Corpus sanity
# ---------------------------------------------------------------------------


def test_corpus_shape():
    ids = _ids(pc.ALL_CASES)
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(pc.ALL_CASES) >= 150
    valid = [c for c in pc.CORPUS if c.expect == pc.OK]
    invalid = [c for c in pc.CORPUS if c.expect != pc.OK]
    assert len(valid) >= 50
    assert len(invalid) >= 100
    for case in pc.ALL_CASES:
        assert case.expect == pc.OK or case.expect in REJECT_STATUSES, case.id
        if case.id.startswith(("stricter-", "looser-")):
            assert case.reason and "RFC" in case.reason, case.id
    # Every case is exactly one head: nothing follows the first empty line.
    for case in pc.ALL_CASES:
        end = case.data.find(b"\r\n\r\n")
        assert end in (-1, len(case.data) - 4), case.id


# ---------------------------------------------------------------------------
# llhttp side (pins the oracle's behaviour; no fastpause needed)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", pc.CORPUS, ids=_ids(pc.CORPUS))
def test_llhttp_corpus_verdict(case):
    got = pc.llhttp_parse(case.data)
    if case.expect == pc.OK:
        assert got == ("accept", pc.split_valid_head(case.data))
    else:
        assert got[0] == "reject", got


@pytest.mark.parametrize("case", pc.STRICTER_THAN_LLHTTP, ids=_ids(pc.STRICTER_THAN_LLHTTP))
def test_llhttp_accepts_stricter_table(case):
    """If this fails, llhttp got stricter: move the case into CORPUS."""
    got = pc.llhttp_parse(case.data)
    assert got[0] == "accept", got


@pytest.mark.parametrize("case", pc.LOOSER_THAN_LLHTTP, ids=_ids(pc.LOOSER_THAN_LLHTTP))
def test_llhttp_rejects_looser_table(case):
    """If this fails, llhttp now accepts it: move the case into CORPUS."""
    got = pc.llhttp_parse(case.data)
    assert got[0] == "reject", got


@pytest.mark.parametrize(
    "case", [c for c in pc.ALL_CASES if len(c.data) < 4096], ids=lambda c: c.id
)
def test_llhttp_oracle_piecewise_feed_is_equivalent(case):
    """Feeding byte-by-byte must not change the oracle's verdict or result."""
    whole = pc.llhttp_parse(case.data)
    pieces = pc.llhttp_parse(case.data, chunks=list(range(1, len(case.data))))
    assert whole[0] == pieces[0]
    if whole[0] == "accept":
        assert whole == pieces


# ---------------------------------------------------------------------------
# fastpause vs llhttp
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", pc.CORPUS, ids=_ids(pc.CORPUS))
def test_corpus_differential(core, case):
    fp = pc.fastpause_parse(core, case.data, **case.kwargs)
    ll = pc.llhttp_parse(case.data)
    if case.expect == pc.OK:
        expected = pc.split_valid_head(case.data)
        assert fp[0] == "accept", f"fastpause rejected valid head {case.data[:300]!r}: {fp}"
        _check_result_types(fp[1])
        assert fp[1] == expected
        assert ll == ("accept", expected)
        assert fp[1] == ll[1]
    else:
        assert fp[0] == "reject", (
            f"fastpause accepted invalid head {case.data[:300]!r} -> {fp[1]!r}; llhttp: {ll[1]}"
        )
        assert ll[0] == "reject"
        _check_head_error(core, case.data, case.kwargs, case.expect)


@pytest.mark.parametrize("case", pc.STRICTER_THAN_LLHTTP, ids=_ids(pc.STRICTER_THAN_LLHTTP))
def test_stricter_than_llhttp(core, case):
    assert pc.llhttp_parse(case.data)[0] == "accept"
    _check_head_error(core, case.data, case.kwargs, case.expect)


@pytest.mark.parametrize("case", pc.LOOSER_THAN_LLHTTP, ids=_ids(pc.LOOSER_THAN_LLHTTP))
def test_valid_heads_llhttp_rejects(core, case):
    assert pc.llhttp_parse(case.data)[0] == "reject"
    fp = pc.fastpause_parse(core, case.data, **case.kwargs)
    assert fp[0] == "accept", f"fastpause rejected valid head {case.data!r}: {fp}"
    _check_result_types(fp[1])
    method, target, version, headers = fp[1]
    expected = pc.split_valid_head(case.data)
    assert (method, target, version) == expected[:3]

    # Repeated identical Content-Length is "treated as one": the returned list
    # may either keep the lines as sent or fold them into a single field.
    def is_cl(h):
        return h[0].lower() == b"content-length"

    assert [h for h in headers if not is_cl(h)] == [h for h in expected[3] if not is_cl(h)]
    sent_cl = [h for h in expected[3] if is_cl(h)]
    got_cl = [h for h in headers if is_cl(h)]
    if sent_cl:
        assert got_cl == sent_cl or (len(got_cl) == 1 and got_cl[0][1] == b"5"), got_cl
    else:
        assert got_cl == []


# ---------------------------------------------------------------------------
# Limits: boundaries are exact and the parameters are honoured
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [64, 100, 1000, 32768])
def test_max_head_size_boundary(core, limit):
    ok = pc._padded_to(limit)
    assert pc.fastpause_parse(core, ok, max_head_size=limit)[0] == "accept"
    _check_head_error(core, pc._padded_to(limit + 1), {"max_head_size": limit}, 431)


@pytest.mark.parametrize("limit", [1, 2, 10, 100])
def test_max_headers_boundary(core, limit):
    assert pc.fastpause_parse(core, pc._n_fields(limit), max_headers=limit)[0] == "accept"
    _check_head_error(core, pc._n_fields(limit + 1), {"max_headers": limit}, 431)


@pytest.mark.parametrize("limit", [1, 2, 50, 8192])
def test_max_uri_size_boundary(core, limit):
    ok = pc.head(b"GET " + pc._target_of_len(limit) + b" HTTP/1.1", pc.HOST)
    assert pc.fastpause_parse(core, ok, max_uri_size=limit)[0] == "accept"
    bad = pc.head(b"GET " + pc._target_of_len(limit + 1) + b" HTTP/1.1", pc.HOST)
    _check_head_error(core, bad, {"max_uri_size": limit}, 414)
