"""AEAD record throughput: cryptography's in-place ``encrypt_into``/``decrypt_into`` against
the allocating fallback used with cryptography < 47, side by side in one process.

    python bench/aead_paths.py [--seconds 1.0] [--size 16384]

Prints the best of alternating rounds, in MB/s, for sealing and opening records of
``--size`` plaintext bytes on each path, and the ratio. On cryptography < 47 only the
allocating path can run.
"""

from __future__ import annotations

import argparse
import os
import time

from noports.crypto import records as r


def _rate(fn, size: int, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while (dt := time.perf_counter() - t0) < seconds:
        for _ in range(64):
            fn()
        n += 64
    return n * size / dt / 1e6


def run(into: bool, suite: int, size: int, seconds: float) -> tuple[float, float]:
    secret, sid = os.urandom(r.SECRET_LEN), "bench-session"
    sealer = r.RecordSealer(secret, sid, r.C2D, suite=suite)
    sealer.aead = r._aead(suite, r.derive_key(secret, sid, r.C2D, 0, suite), into)
    opener = r.RecordOpener(secret, sid, r.C2D)
    pt = os.urandom(size)
    out = bytearray(size + 64)
    back = bytearray(size)
    opener.take_preamble(sealer.preamble)
    opener.aead = r._aead(suite, r.derive_key(secret, sid, r.C2D, 0, suite), into)
    flen = sealer.seal_into(pt, out)
    seal = _rate(lambda: sealer.seal_into(pt, out), size, seconds)
    sealer.seq = 0

    def open_one() -> None:
        opener.seq = 0
        sealer.seq = 0
        sealer.seal_into(pt, out)
        opener.open_frame_into(out, flen, back)

    both = _rate(open_one, size, seconds)
    assert bytes(back) == pt
    return seal, both


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; best kept")
    a = ap.parse_args()
    import cryptography

    print(
        f"cryptography {cryptography.__version__}, {a.size} B records, "
        f"{a.seconds} s x {a.rounds} rounds, best"
    )
    for suite in (r.SUITE_AES_256_GCM, r.SUITE_CHACHA20_POLY1305):
        res: dict[bool, tuple[float, float]] = {}
        paths = (True, False) if r.AEAD_INTO else (False,)
        for _ in range(a.rounds):  # alternate the paths so drift hits both alike
            for into in paths:
                got = run(into, suite, a.size, a.seconds)
                old = res.get(into, (0.0, 0.0))
                res[into] = (max(old[0], got[0]), max(old[1], got[1]))
        for into in paths:
            name = "in-place  " if into else "allocating"
            print(
                f"{r.SUITE_LABELS[suite]:18} {name} seal {res[into][0]:8.0f} MB/s   "
                f"seal+open {res[into][1]:8.0f} MB/s"
            )
        if len(res) == 2:
            print(
                f"{'':18} allocating/in-place: seal {res[False][0] / res[True][0]:.2f}, "
                f"seal+open {res[False][1] / res[True][1]:.2f}"
            )


if __name__ == "__main__":
    main()
