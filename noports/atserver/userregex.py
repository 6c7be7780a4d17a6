"""Client-supplied regexes (scan, notify:list, monitor) with a time bound.

The stdlib ``re`` engine backtracks without limit, so one pattern such as
``(\\w|\\w|\\w|\\w|\\w|\\w)*!`` on the event loop stopped the whole server. Patterns go through
the ``regex`` module instead (same syntax and search semantics as ``re`` for what clients
send), compiled once per distinct pattern, and every search carries a timeout. A pattern that
ever times out is remembered as hostile: it stops matching and later requests with it are
refused at once, so its cost is paid once per pattern, not once per key or notification.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import regex as _regex  # type: ignore[import-untyped]

from ..errors import AtError

REQUEST_BUDGET = 0.5  # seconds of matching one scan / notify:list may spend in total
MATCH_BUDGET = 0.05  # seconds one match may spend (more marks the pattern hostile)
_CACHE_SIZE = 256
_MAX_PATTERN = 4096

_cache: OrderedDict[str, ClientPattern] = OrderedDict()


class ClientPattern:
    __slots__ = ("text", "rx", "hostile")

    def __init__(self, text: str, rx: _regex.Pattern[str]) -> None:
        self.text = text
        self.rx = rx
        self.hostile = False

    def search(self, s: str, timeout: float = MATCH_BUDGET) -> bool:
        """``re.search`` semantics; False once the pattern has proved hostile."""
        if self.hostile:
            return False
        try:
            return self.rx.search(s, timeout=max(timeout, 0.001)) is not None
        except TimeoutError:
            self.hostile = True
            return False


def compile_client(text: str | None) -> ClientPattern | None:
    """The compiled pattern (cached), or None for no filter. Bad or hostile: AT0003."""
    if not text:
        return None
    got = _cache.get(text)
    if got is not None:
        _cache.move_to_end(text)
    else:
        if len(text) > _MAX_PATTERN:
            raise AtError.for_code("AT0003", "invalid regex: pattern too long")
        try:
            got = ClientPattern(text, _regex.compile(text))
        except (_regex.error, ValueError, OverflowError, RecursionError) as exc:
            raise AtError.for_code("AT0003", f"invalid regex: {exc}") from exc
        _cache[text] = got
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    if got.hostile:
        raise refused(text)
    return got


def refused(text: str) -> AtError:
    return AtError.for_code("AT0003", f"invalid regex: {text[:40]!r} takes too long to match")


class Budget:
    """One request's matching time: ``match(pattern, s)`` until the budget is spent."""

    __slots__ = ("pattern", "deadline")

    def __init__(self, pattern: ClientPattern | None, seconds: float = REQUEST_BUDGET) -> None:
        self.pattern = pattern
        self.deadline = time.monotonic() + seconds

    def match(self, s: str) -> bool:
        p = self.pattern
        if p is None:
            return True
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise AtError.for_code("AT0003", "regex matching took too long; narrow the pattern")
        t = min(left, MATCH_BUDGET)
        try:
            return p.rx.search(s, timeout=t) is not None
        except TimeoutError:
            if t >= MATCH_BUDGET:
                p.hostile = True
                raise refused(p.text) from None
            raise AtError.for_code(
                "AT0003", "regex matching took too long; narrow the pattern"
            ) from None
