#!/usr/bin/env python3
"""Atheris harness: fastpause's request-head parser, with llhttp (httptools) as oracle.

For every input (the part up to the first empty line is taken as the head, or the
whole input with an empty line added):

* ``parse_request_head`` raises nothing but ``HeadError`` (with a 4xx/505 status);
* an accepted head obeys the framing invariants (no CL with TE, chunked last and once,
  no TE in HTTP/1.0, one Host in HTTP/1.1, agreeing lengths, no bare CR/LF, tokens);
* the core frames its body with the length a big-integer reading of Content-Length
  gives (``request_framing``; no wrap, leading zeros keep the value);
* if llhttp accepts the head too, it has the same reading (method, target, version,
  field lines) and frames a body exactly as fastpause does (same body, same end).

Any violation raises, which atheris reports as a crash with the input saved.

    python fuzz/fuzz_request_head.py -atheris_runs=1000000 -dict=fuzz/http.dict \
        fuzz/corpus/request_head

See fuzz/README.md.
"""

# ruff: noqa: SIM114  (separate branches on purpose: each is coverage for the fuzzer)
from __future__ import annotations

import os
import sys
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

with atheris.instrument_imports():
    import number_corpus as nc
    import smuggling_corpus as sc

from head_tokens import decode  # noqa: E402

from fastpause import _core  # noqa: E402  (compiled: not instrumented)

REASONS = (
    "CONNECT needs an authority-form target (host:port)",
    "Content-Length together with Transfer-Encoding",
    "HTTP version not supported",
    "Transfer-Encoding is not allowed in HTTP/1.0",
    "absolute-form target without a host",
    "asterisk-form target is only valid for OPTIONS",
    "bare CR in header section",
    "bare LF in header section",
    "chunked must be the final transfer coding, applied once",
    "invalid HTTP version",
    "invalid Host header",
    "invalid authority in request target",
    "invalid or conflicting Content-Length",
    "invalid request method",
    "invalid request target",
    "invalid transfer coding",
    "missing Host header",
    "more than one Host header",
    "request target too long",
    "the final transfer coding must be chunked",
    "too many header fields",
    "unsupported expectation",
    "request header section too large",
    "obsolete line folding is not allowed",
    "whitespace between header field name and colon",
    "invalid character in header field name",
    "empty header field name",
    "invalid character in header field value",
    "incomplete or trailing bytes after the head",
    "Host name longer than 255 bytes",
    "host name in request target longer than 255 bytes",
    "the path climbs above the root ('..')",
    "a dot segment hidden behind %2F, '\\' or ';' is ambiguous",
    "invalid percent-encoding in the path",
)


@atheris.instrument_func
def feedback(verdict: str, reason: str, framing: tuple, version, nfields: int) -> None:
    """Distinct branches per outcome, so the fuzzer sees the (uninstrumented) C parser's
    decisions as coverage: each rejection reason and each accepted shape is new."""
    if verdict == "reject":
        for i, r in enumerate(REASONS):
            if reason == r:
                _reason_branch(i)
                return
        raise AssertionError(f"unknown rejection reason {reason!r}")
    if framing == ("chunked",):
        if version == (1, 1):
            pass
    elif framing[1] > 0:
        if framing[1] > 1000:
            pass
    elif version == (1, 0):
        pass
    if nfields > 10:
        pass
    if nfields > 50:
        pass


@atheris.instrument_func
def shape(result) -> None:
    """More branches for accepted heads: target form and the fields that matter."""
    target = bytes(result[1])
    if target == b"*":
        pass
    elif target.startswith(b"/"):
        pass
    elif target[:7].lower() == b"http://":
        pass
    elif target[:8].lower() == b"https://":
        pass
    else:
        pass
    for name, _ in result[3]:
        n = bytes(name).lower()
        if n == b"host":
            continue
        if n == b"content-length":
            continue
        if n == b"transfer-encoding":
            continue
        if n == b"connection":
            continue
        if n == b"upgrade":
            continue
        if n == b"expect":
            continue
        if n == b"te":
            continue


@atheris.instrument_func
def _reason_branch(i: int) -> None:
    # one branch per reason (a table of comparisons: each is its own code location)
    if i == 0:
        return
    if i == 1:
        return
    if i == 2:
        return
    if i == 3:
        return
    if i == 4:
        return
    if i == 5:
        return
    if i == 6:
        return
    if i == 7:
        return
    if i == 8:
        return
    if i == 9:
        return
    if i == 10:
        return
    if i == 11:
        return
    if i == 12:
        return
    if i == 13:
        return
    if i == 14:
        return
    if i == 15:
        return
    if i == 16:
        return
    if i == 17:
        return
    if i == 18:
        return
    if i == 19:
        return
    if i == 20:
        return
    if i == 21:
        return
    if i == 22:
        return
    if i == 23:
        return
    if i == 24:
        return
    if i == 25:
        return
    if i == 26:
        return
    if i == 27:
        return
    return


def one_head(data: bytes) -> bytes:
    data += b"\r\n\r\n"
    return data[: data.find(b"\r\n\r\n") + 4]


def TestOneInput(data: bytes) -> None:
    head = one_head(decode(data))
    try:
        result = _core.parse_request_head(head)
    except _core.HeadError as e:
        if e.status not in (400, 414, 417, 431, 505) or not e.reason:
            raise AssertionError(f"bad HeadError {e.status} {e.reason!r}") from None
        feedback("reject", e.reason, ("length", 0), None, 0)
        return
    sc.check_accepted_head(head, result)
    sc.check_framing_value(_core, head, result)
    sc.check_head_against_llhttp(head, result)
    framing = sc.framing_of([(bytes(n), bytes(v)) for n, v in result[3]])
    feedback("accept", "", framing, tuple(result[2]), len(result[3]))
    shape(result)


def write_seeds(directory: Path) -> None:
    """Seed an empty corpus directory from the smuggling corpus and the boundary numbers."""
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        return
    seeds = [a.attack for a in sc.ATTACKS] + [a.lead for a in sc.ATTACKS if a.lead]
    seeds += [n.data for n in sc.NEUTRALIZED]
    seeds += [data for _, data in nc.request_streams()]
    for i, s in enumerate(seeds):
        (directory / f"seed-{i:04d}").write_bytes(b"\x00" + s[:4096])


def main() -> None:
    corpus_dirs = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    for d in corpus_dirs[:1]:
        write_seeds(d)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
