"""Fuzz harnesses for every parser that takes network (or file) input.

Each target takes bytes and may raise only its declared exceptions (``NoPortsError`` and its
subclasses: AtError, ProtocolError, ConfigError, ...); anything else, and any input slower
than ``--slow-ms``, is a finding. Atheris (libFuzzer for Python, as OSS-Fuzz runs it) drives
the targets when it is installed; otherwise a seeded random-mutation driver does.

    python -m tests.fuzz                       # every target, 60 s each, Atheris if present
    python -m tests.fuzz --seconds 300 server_line relay_auth_line
    python -m tests.fuzz --engine random --runs 20000

Exit status 0 when nothing was found, 1 on a finding (the input is printed as a Python
literal). The default test suite runs a short bounded pass (tests/test_fuzz_smoke.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

from noports.errors import NoPortsError

Target = Callable[[bytes], None]
TARGETS: dict[str, Target] = {}


def target(fn: Target) -> Target:
    TARGETS[fn.__name__] = fn
    return fn


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# -- the embedded atServer: framing, verb parser, whole-request handling ----------------------


@target
def server_linebuffer(data: bytes) -> None:
    from noports.atserver.parse import LineBuffer

    b = LineBuffer(limit=4096)
    half = len(data) // 2
    for chunk in (data[:half], data[half:]):
        for line in b.feed(chunk):
            assert "\n" not in line


@target
def server_line(data: bytes) -> None:
    from noports.atserver.parse import parse_line

    parse_line(_text(data).replace("\n", " "))


_ENGINE: list[object] = []


def _engine() -> object:
    if not _ENGINE:
        import tempfile

        from noports.atserver import verbs
        from noports.atserver.engine import Engine
        from noports.atserver.store import Store

        d = tempfile.mkdtemp(prefix="np-fuzz-")
        store = Store(os.path.join(d, "server.db"))
        store.add_atsign("@alice", 0)
        _ENGINE.append(Engine(store, handlers=verbs.HANDLERS))
    return _ENGINE[0]


class _Port:
    def write(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


@target
def server_session(data: bytes) -> None:
    """Whole requests through an unauthenticated and an authenticated session (no I/O)."""
    from noports.atserver.engine import Engine

    eng = _engine()
    assert isinstance(eng, Engine)
    text = _text(data)
    for authed in (False, True):
        s = eng.session(_Port())
        if authed:
            s.atsign, s.authed, s.auth_kind = "@alice", True, "pkam"
        else:
            s.handle("from:@alice")
        for line in text.split("\n")[:8]:
            reply = s.handle(line.strip())
            assert "AT0011" not in reply.text, (line, reply.text)  # internal error = a bug
        eng.closed(s)


# -- the client side of the atProtocol -------------------------------------------------------


@target
def client_codec(data: bytes) -> None:
    from noports.at.protocol import AtClientCodec

    c = AtClientCodec(max_buffer=8192)
    c.receive_data(b"@")
    c.next_event()
    for cmd in ("from:@alice", "scan", "monitor"):
        try:
            c.send(cmd)
        except NoPortsError:
            break
    c.receive_data(data)
    for _ in range(64):
        ev = c.next_event()
        if ev is None or type(ev).__name__ == "_NeedData":
            break


@target
def at_error_payload(data: bytes) -> None:
    from noports.at.protocol import parse_error

    parse_error(_text(data))


# -- relay auth lines, envelopes, session messages --------------------------------------------

_KEYS: list[object] = []


def _keys() -> object:
    if not _KEYS:
        from noports.crypto.atkeys import AtKeys

        _KEYS.append(AtKeys.generate("@fuzz"))
    return _KEYS[0]


@target
def relay_auth_line(data: bytes) -> None:
    from noports.relay.auth import AuthLine, Outcome

    k = _keys()
    v = AuthLine("sid", "cn", "rn", k.encrypt_public, 4096)  # type: ignore[attr-defined]
    verdict = v.feed(data)
    if verdict.outcome is Outcome.NEED_MORE:
        verdict = v.eof()
    assert verdict.outcome is not Outcome.NEED_MORE


@target
def envelope(data: bytes) -> None:
    from noports.crypto.envelope import parse_envelope, verify_envelope

    k = _keys()
    parse_envelope(data)
    verify_envelope(data, k.encrypt_public)  # type: ignore[attr-defined]


@target
def relay_request(data: bytes) -> None:
    from noports.session.wire import parse_relay_request

    for legacy in (False, True):
        try:
            parse_relay_request(_text(data), sender="@alice", legacy=legacy)
        except NoPortsError:
            pass


@target
def relay_reply(data: bytes) -> None:
    from noports.session.wire import parse_relay_reply

    parse_relay_reply(_text(data))


@target
def session_request(data: bytes) -> None:
    from noports.session.wire import parse_request

    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return
    if isinstance(obj, dict):
        for kind in ("ssh", "npt"):
            try:
                parse_request(kind, obj)
            except NoPortsError:
                pass


@target
def ping_response(data: bytes) -> None:
    from noports.session.features import parse_ping_response

    parse_ping_response(data)


@target
def control_messages(data: bytes) -> None:
    from noports.tunnel.control import ControlParser

    p = ControlParser()
    p.feed(data)


# -- device-side inputs: permit-open, ssh keys, config and policy files ------------------------


@target
def permit_open(data: bytes) -> None:
    from noports.session.permitopen import parse_entry

    parse_entry(_text(data))


@target
def ssh_public_key(data: bytes) -> None:
    from noports.sshnpd.authkeys import parse_public_key

    parse_public_key(data)


@target
def env_file(data: bytes) -> None:
    from noports.config import parse_env_file

    parse_env_file(_text(data))


@target
def policy_file(data: bytes) -> None:
    from noports.npa.policy import parse_policy

    parse_policy(data)


# -- drivers ----------------------------------------------------------------------------------

DECLARED: tuple[type[BaseException], ...] = (NoPortsError,)
INSTRUMENTED_SLOWDOWN = 40


class Finding(Exception):
    pass


def checked(fn: Target, slow_ms: float) -> Target:
    def run(data: bytes) -> None:
        t0 = time.perf_counter()
        try:
            fn(data)
        except DECLARED:
            pass
        except Exception as exc:
            raise Finding(f"{fn.__name__}: {type(exc).__name__}: {exc} on {data[:300]!r}") from exc
        ms = (time.perf_counter() - t0) * 1000
        if ms > slow_ms:
            raise Finding(f"{fn.__name__}: {ms:.0f} ms (> {slow_ms:g}) on {data[:300]!r}")

    return run


SEEDS: dict[str, list[bytes]] = {
    "server_line": [b"from:@alice", b"scan:showHidden:true .*", b"notify:update:ttln:1:@b:k@a:v",
                    b'enroll:request:{"otp":"ABC123"}', b"monitor:123 .*", b"update:json:{}"],
    "server_session": [b"scan (a|aa)+$x\nnotify:list .*", b"update:public:k@alice v\nscan:@bob"],
    "client_codec": [b"data:ok\n@", b"error:AT0003-x\n@", b"notification: {}\n"],
    "relay_auth_line": [b'{"signature":"x","hashingAlgo":"sha256","signingAlgo":"rsa2048"}\n'],
    "control_messages": [b"connect:1:k:iv\n", b"heartbeat:1\n"],
    "permit_open": [b"localhost:22", b"[::1]:*", b"0x7f.1:22"],
    "ssh_public_key": [
        b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG4rT3vTt99Ox5kndS4HmgTrKBT8SKzhK4rhGkEVGlCI a"
    ],
    "env_file": [b"A=1\n# c\nB = x=y\n"],
    "policy_file": [b"[[rule]]\n"],
}


def run_random(names: list[str], runs: int, slow_ms: float, seconds: float) -> int:
    import random

    bad = 0
    for name in names:
        for seed in SEEDS.get(name, [b""]):  # warm up: imports and caches are not findings
            try:
                TARGETS[name](seed)
            except DECLARED:
                pass
        fn = checked(TARGETS[name], slow_ms)
        rng = random.Random(0xF022)
        seeds = SEEDS.get(name, [b""])
        deadline = time.monotonic() + seconds
        n = 0
        try:
            for seed in seeds:
                fn(seed)
            while n < runs and time.monotonic() < deadline:
                base = bytearray(rng.choice(seeds))
                for _ in range(rng.randint(1, 8)):
                    op = rng.randrange(4)
                    pos = rng.randint(0, len(base))
                    if op == 0:
                        base[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
                    elif op == 1 and base:
                        del base[pos : pos + rng.randint(1, 8)]
                    elif op == 2:
                        base[pos:pos] = rng.choice(
                            [b"\n", b":", b"@", b"{", b"[" * 64, b"\xff", b"\r\n", b'"', b"*"]
                        )
                    else:
                        base = bytearray(rng.choice(seeds)) + base
                fn(bytes(base[:8192]))
                n += 1
        except Finding as exc:
            print(f"FINDING {exc}")
            bad += 1
            continue
        print(f"{name}: {n} inputs, no finding")
    return 1 if bad else 0


def _atheris_one(name: str, seconds: float, runs: int, slow_ms: float) -> None:
    import tempfile

    import atheris

    raw = TARGETS[name]
    for seed in SEEDS.get(name, [b""]):  # warm up: imports and caches are not findings
        try:
            raw(seed)
        except DECLARED:
            pass
    atheris.instrument_all()  # coverage feedback for everything loaded, noports included
    # Instrumented code runs 10-50x slower: the per-input bound scales with it here (the
    # uninstrumented random driver enforces --slow-ms as given).
    fn = checked(raw, slow_ms * INSTRUMENTED_SLOWDOWN)
    out = tempfile.mkdtemp(prefix=f"np-fuzz-{name}-")
    argv = [sys.argv[0], f"-max_total_time={int(max(1, seconds))}", "-rss_limit_mb=4096",
            f"-artifact_prefix={out}/", "-max_len=4096", "-timeout=10"]
    if runs:
        argv.append(f"-runs={runs}")
    atheris.Setup(argv, fn)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("targets", nargs="*", help=f"default: all ({', '.join(TARGETS)})")
    p.add_argument("--seconds", type=float, default=60.0, help="per target (default 60)")
    p.add_argument("--runs", type=int, default=0, help="inputs per target (0: until --seconds)")
    p.add_argument("--slow-ms", type=float, default=50.0, help="slowest allowed input (50 ms)")
    p.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one target under Atheris
    a = p.parse_args(argv)
    if a.one:
        _atheris_one(a.one, a.seconds, a.runs, a.slow_ms)
        return 0
    names = a.targets or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        p.error(f"unknown target(s): {', '.join(unknown)}")
    engine = a.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "random"
            print("atheris is not installed: using the random-mutation driver")
    if engine == "random":
        return run_random(names, a.runs or 10**9, a.slow_ms, a.seconds)
    bad = 0
    for name in names:  # libFuzzer exits the process at the end: one child per target
        cmd = [sys.executable, "-m", "tests.fuzz", "--one", name, "--seconds", str(a.seconds),
               "--runs", str(a.runs), "--slow-ms", str(a.slow_ms)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.seconds + 300)
        except subprocess.TimeoutExpired as exc:
            bad += 1
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
            print(f"FINDING in {name}: no result within {a.seconds + 300:g} s\n{err[-2000:]}")
            continue
        tail = [ln for ln in r.stderr.splitlines() if ln.startswith(("Done", "#", "==", " === "))]
        if r.returncode != 0:
            bad += 1
            print(f"FINDING in {name} (exit {r.returncode}):\n{r.stderr[-3000:]}")
        else:
            print(f"{name}: {tail[-1] if tail else 'ok'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
