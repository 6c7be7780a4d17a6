"""Multi-mode control messages: formats, reassembly, old newline-less clients, caps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noports.crypto.stream import CtrKeys
from noports.errors import BufferLimitError
from noports.tunnel.control import (
    OLD_MESSAGE_LEN,
    Connect,
    ControlParser,
    Heartbeat,
    Unknown,
    format_connect,
    format_heartbeat,
    parse_message,
)

K1 = CtrKeys(bytes(range(32)), bytes(range(16)))
K2 = CtrKeys(bytes(range(1, 33)), bytes(range(1, 17)))
T1 = CtrKeys(bytes(32), bytes(16), bytes([7]) * 32, bytes([9]) * 16)


def test_formats_roundtrip() -> None:
    assert format_connect() == b"connect:no:encrypt\n"
    old = format_connect(K1)
    assert len(old) == OLD_MESSAGE_LEN + 1
    assert parse_message(old.decode()) == Connect(keys=K1)
    twin = format_connect(T1)
    assert twin.count(b":") == 4
    assert parse_message(twin.decode()) == Connect(keys=T1)
    assert parse_message(format_connect(conn_id=12).decode()) == Connect(conn_id=12)
    assert parse_message("connect:no:encrypt") == Connect()
    assert parse_message(format_heartbeat(3).decode()) == Heartbeat("3")
    assert isinstance(parse_message("hello"), Unknown)
    assert isinstance(parse_message("connect:AAAA:BBBB"), Unknown)  # bad key sizes
    assert isinstance(parse_message("connect:aead:-1"), Unknown)
    assert isinstance(parse_message("connect:a:b:c"), Unknown)


def test_reassembles_messages_split_anywhere() -> None:
    stream = format_connect(K1) + format_heartbeat(1) + format_connect() + format_connect(T1)
    for cut in range(1, len(stream)):
        p = ControlParser(accept_unterminated=False)
        evs = p.feed(stream[:cut]) + p.feed(stream[cut:])
        assert evs == [Connect(keys=K1), Heartbeat("1"), Connect(), Connect(keys=T1)], cut


def test_old_newline_less_messages() -> None:
    one, two = format_connect(K1).rstrip(b"\n"), format_connect(K2).rstrip(b"\n")
    p = ControlParser()
    assert p.feed(one) == [Connect(keys=K1)]
    assert p.feed(one + two) == [Connect(keys=K1), Connect(keys=K2)]
    assert ControlParser().feed(b"connect:no:encrypt") == [Connect()]
    # a half message waits for the rest
    p = ControlParser()
    assert p.feed(one[:40]) == []
    assert p.feed(one[40:]) == [Connect(keys=K1)]
    # a new client's newline arriving late is harmless
    p = ControlParser()
    assert p.feed(one) == [Connect(keys=K1)]
    assert p.feed(b"\n") == []


def test_twin_sessions_never_guess_at_unterminated_input() -> None:
    """The first 77 bytes of a 4-field twin message look exactly like an old message."""
    twin = format_connect(T1)
    p = ControlParser(accept_unterminated=False)
    assert p.feed(twin[:OLD_MESSAGE_LEN]) == []
    assert p.feed(twin[OLD_MESSAGE_LEN:]) == [Connect(keys=T1)]


def test_unterminated_input_is_capped() -> None:
    p = ControlParser(max_line=4096)
    p.feed(b"x" * 4000)
    with pytest.raises(BufferLimitError):
        p.feed(b"y" * 200)
    p = ControlParser()
    assert p.feed(b"\n\n  \n") == []


# ---- property: any message sequence, any split, same events; garbage never crashes ----


_MSG = st.one_of(
    st.just(format_connect()),
    st.builds(
        lambda k, iv: format_connect(CtrKeys(k, iv)),
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=16, max_size=16),
    ),
    st.builds(
        lambda a, b, c, d: format_connect(CtrKeys(a, b, c, d)),
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=16, max_size=16),
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=16, max_size=16),
    ),
    st.builds(lambda n: format_connect(conn_id=n), st.integers(1, 2**31)),
    st.builds(format_heartbeat, st.integers(0, 10**6)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_MSG, max_size=8), st.lists(st.integers(1, 400), max_size=10))
def test_property_any_split_same_events(msgs: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(msgs)
    expect = [parse_message(m.decode()) for m in msgs]
    p = ControlParser(accept_unterminated=False)
    got, pos = [], 0
    for c in cuts:
        got += p.feed(stream[pos : pos + c])
        pos += c
    got += p.feed(stream[pos:])
    assert got == expect


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_property_garbage_only_declared_errors(data: bytes, legacy: bool) -> None:
    p = ControlParser(accept_unterminated=legacy, max_line=256)
    try:
        for ev in p.feed(data):
            assert isinstance(ev, (Connect, Heartbeat, Unknown))
    except BufferLimitError:
        assert len(data) > 256
