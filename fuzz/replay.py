#!/usr/bin/env python3
"""Replay fuzz corpora (and random mutations of them) through the head parser and its
oracles without atheris: for a build with sanitizers, where libFuzzer's coverage hooks
clash with gcc's ASan runtime. See fuzz/README.md ("Sanitizers").

    python fuzz/replay.py [--mutations N] [--seed S] CORPUS_DIR...
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import number_corpus as nc  # noqa: E402
import smuggling_corpus as sc  # noqa: E402
from head_tokens import decode  # noqa: E402  (corpus files start with a mode byte)

from fastpause import _core  # noqa: E402

INTERESTING = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b",",
    b";",
    b"\x0b",
    b"\x7f",
    b"\x80",
    b"\xff",
    b'"',
    b"0",
    b"9" * 25,
    b"0" * 30,
    b"9223372036854775808",
    b"8000000000000000",
    b"chunked",
    b"\r\n\r\n",
]


def check(data: bytes) -> None:
    data += b"\r\n\r\n"
    head = data[: data.find(b"\r\n\r\n") + 4]
    try:
        result = _core.parse_request_head(head)
    except _core.HeadError:
        return
    sc.check_accepted_head(head, result)
    sc.check_framing_value(_core, head, result)
    sc.check_head_against_llhttp(head, result)


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randint(0, len(b)) if b else 0
        op = rng.random()
        if op < 0.4:
            b[i:i] = rng.choice(INTERESTING)
        elif op < 0.6 and b:
            del b[i : i + rng.randint(1, 8)]
        elif op < 0.8 and b:
            b[i : i + 1] = bytes([rng.randrange(256)])
        else:
            j = rng.randint(0, len(b))
            b[i:i] = b[j : j + rng.randint(1, 40)]
    return bytes(b)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus", nargs="+", type=Path)
    ap.add_argument("--mutations", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    inputs = [decode(f.read_bytes()) for d in args.corpus for f in sorted(d.iterdir())]
    inputs += [a.attack for a in sc.ATTACKS] + [n.data for n in sc.NEUTRALIZED]
    inputs += [data for _, data in nc.request_streams()]
    t0 = time.monotonic()
    for data in inputs:
        check(data)
    rng = random.Random(args.seed)
    for _ in range(args.mutations):
        check(mutate(rng, rng.choice(inputs)))
    n = len(inputs) + args.mutations
    print(f"replayed {n} inputs in {time.monotonic() - t0:.0f} s: no failure")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
