"""Session mutexes for redundant instances on one atSign (latest spec 2.2 and 8.2).

Several srvd processes may serve one relay atSign, and several sshnpd processes one device:
each receives every request. To let exactly one of them act, each puts an immutable self
record ``<sid>.session_mutexes.<namespace>@<me>`` (value ``lock``, unencrypted, ttl 30 s) to
its atServer; the atServer refuses the second put of a live immutable record, so the first
writer owns the session and the others drop it silently. Any other failure of the put means
"proceed" (official): a lost mutex round trip must not lose the session.
"""

from __future__ import annotations

import logging

from ..at import commands
from ..at.client import AtClient
from ..errors import AtError, NoPortsError

log = logging.getLogger("noports.session.mutex")

TTL_MS = 30_000


def mutex_key(session_id: str, namespace: str, atsign: str) -> str:
    return f"{session_id.lower()}.session_mutexes.{namespace}{atsign}"


async def acquire(client: AtClient, session_id: str, namespace: str) -> bool:
    """True when this instance owns the session (or the put failed for another reason)."""
    key = mutex_key(session_id, namespace, client.atsign)
    meta = commands.Metadata(ttl=TTL_MS, immutable=True)
    try:
        await client.execute(commands.update(key, "lock", meta))
        return True
    except AtError as exc:
        if "immutable" in str(exc).lower():
            return False
        log.warning("session mutex %s: %s (proceeding)", key, exc)
        return True
    except (NoPortsError, OSError) as exc:
        log.warning("session mutex %s: %s (proceeding)", key, exc)
        return True
