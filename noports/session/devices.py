"""What the records a daemon shares with us say: its devices, and why it did not answer.

Used by ``sshnp --list-devices`` and by every client (sshnp, npt) when a daemon stays silent,
to tell a wrong device name from a daemon that is down or that does not accept us.
"""

from __future__ import annotations

import json
import re

from ..at import commands
from ..at.client import AtClient
from ..errors import EXIT_NOT_FOUND, NoPortsError, PeerTimeoutError
from .features import FEATURE_CHECK_TIMEOUT_MESSAGE

DEVICE_RX = r"device_info\.[a-z0-9_][a-z0-9_\-]{1,35}\.sshnp"
_KEY = re.compile(r"device_info\.([a-z0-9_][a-z0-9_\-]{1,35})\.sshnp@([^\s@:]+)$")


async def scan_devices(client: AtClient, to: str | None) -> list[tuple[str, str]]:
    """(owner, device) pairs: with ``to`` its remote scan plus our cached copies of its
    records (servers that answer remote scans with nothing still cache the shares)."""
    texts = [await client.execute(commands.scan(DEVICE_RX))]
    if to:
        texts.insert(0, await client.execute(commands.scan(DEVICE_RX, for_atsign=to)))
    found: list[tuple[str, str]] = []
    for text in texts:
        try:
            keys = json.loads(text) if text.strip() else []
        except ValueError:
            keys = []
        for k in keys if isinstance(keys, list) else []:
            m = _KEY.search(str(k))
            if not m:
                continue
            owner = "@" + m.group(2).lower()
            if to and owner != to:
                continue
            if (owner, m.group(1)) not in found:
                found.append((owner, m.group(1)))
    return found


class DeviceNotFoundError(NoPortsError):
    """The daemon shares other devices with us, not the one asked for."""

    exit_code = EXIT_NOT_FOUND


class DaemonSilentError(PeerTimeoutError):
    """The daemon did not answer; what the shared records say about why."""


async def explain_no_answer(client: AtClient, exc: BaseException, daemon: str, device: str) -> None:
    """After the daemon did not answer the ping, say which of the causes it was when the
    records it shares with us tell (the official client only reports the timeout):

    * it shares ``device_info`` for this device: name right and we were accepted, so the
      daemon is not running (or offline) -> exit 5;
    * it shares other devices only: the device name is wrong -> exit 4, listing the names;
    * it shares nothing with us: we are not in its managers list (or it runs with
      ``-h/--hide``, or a policy service decides and denied us), or it never ran -> exit 5.

    Always raises; the original timeout is the cause.
    """
    me = client.atsign
    base = (
        f"{FEATURE_CHECK_TIMEOUT_MESSAGE}: device {device!r} of {daemon} did not answer "
        "within the ping timeout"
    )
    try:
        found = await scan_devices(client, daemon)
    except (NoPortsError, OSError):
        raise exc from None
    devices = sorted({d for o, d in found if o == daemon})
    if device in devices:
        raise DaemonSilentError(
            f"{base}; it shares its device_info with {me}, so the name is right and {me} was "
            "accepted before: its daemon is probably not running or offline"
        ) from exc
    if devices:
        raise DeviceNotFoundError(
            f"{base}: {daemon} has no device {device!r} for {me} (wrong -d?); devices it "
            f"shares with {me}: {', '.join(devices)}"
        ) from exc
    raise DaemonSilentError(
        f"{base}, and {daemon} shares no device with {me}: {me} is probably not in the "
        f"daemon's managers list (-m), or its policy service denied {me}, or the daemon runs "
        "with -h/--hide or has never run"
    ) from exc
