"""What a verb handler returns (``Reply``) and what a session may do to its connection (``Port``).

A leaf module: ``engine`` and every ``verbs_*`` module import it, and it imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Port(Protocol):
    """What a session may do to its connection."""

    def write(self, text: str) -> None: ...

    def close(self) -> None: ...


@dataclass
class Reply:
    text: str = ""
    delay: float = 0.0
    close: bool = False
