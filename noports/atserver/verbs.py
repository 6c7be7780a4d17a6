"""The static verb table: every handler of the ``verbs_*`` modules, by verb.

``net`` passes it to the ``Engine``; the engine never imports the verb modules, which import
the engine's types only, so the two do not form a cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from . import verbs_apkam, verbs_auth, verbs_data, verbs_notify
from .parse import Command
from .reply import Reply

if TYPE_CHECKING:
    from .engine import Session

HANDLERS: Mapping[str, Callable[[Session, Command], Reply]] = {
    **verbs_auth.HANDLERS,
    **verbs_data.HANDLERS,
    **verbs_notify.HANDLERS,
    **verbs_apkam.HANDLERS,
}
