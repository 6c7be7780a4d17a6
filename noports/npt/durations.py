"""Human durations for ``npt -T`` (spec 7.2): ``30s``, ``1h``, ``1h,14m,30s``, ``7d``, ``0``.

Units ``d h m s`` (and ``ms``); parts may be joined by commas or written back to back
(``1h30m``); a bare number is seconds. ``0`` means "never": the official client turns it into
365 days, and so do we (daemons cap the value they accept).
"""

from __future__ import annotations

import re

from ..errors import ConfigError

NEVER_S = 365 * 86400
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)?", re.ASCII)


def parse_duration(text: str) -> float:
    """Seconds for ``text``; ConfigError with the offending text otherwise."""
    t = text.strip().lower().replace(" ", "")
    if not t:
        raise ConfigError("empty duration")
    total = 0.0
    for chunk in t.split(","):
        if not chunk:
            raise ConfigError(f"invalid duration {text!r}")
        pos = 0
        while pos < len(chunk):
            m = _PART.match(chunk, pos)
            if m is None or m.end() == pos:
                raise ConfigError(
                    f"invalid duration {text!r} (use e.g. 30s, 1h, 1h,14m,30s, 7d, 0)"
                )
            total += float(m.group(1)) * _UNITS[m.group(2) or "s"]
            pos = m.end()
    if total == 0:
        return float(NEVER_S)
    if total > NEVER_S:
        raise ConfigError(f"duration {text!r} is longer than 365 days")
    return total
