"""``sshnp --list-devices`` (spec 3.4): find shared device_info records, ping, report on stderr.

With ``-t``: the device atSign's ``device_info.<dev>.sshnp`` records shared with us (remote
scan, plus our cached copies); without: every such record our own atServer holds (cached
shares), grouped by sharer.
Each device gets a ``ping``; those answering a ``heartbeat`` within the window are Active.
Text output is the official one on stderr (``  <dev> - v<version> (core v<core>)``; a version
that does not start with a digit, such as the C daemon's ``c0.1.0``, is shown as it is; the
owner atSign follows the name only when no ``-t`` was given). ``--output json`` prints one
JSON object on stdout with every device's owner, state, versions and allowed services.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys

from ..at import commands
from ..at.client import AtClient
from ..errors import EXIT_NOT_FOUND, NoPortsError, PeerTimeoutError
from ..session.client import connect_client
from ..sshnpd.features import FEATURE_CHECK_TIMEOUT_MESSAGE, parse_ping_response

DEVICE_RX = r"device_info\.[a-z0-9_][a-z0-9_\-]{1,35}\.sshnp"
_KEY = re.compile(r"device_info\.([a-z0-9_][a-z0-9_\-]{1,35})\.sshnp@([^\s@:]+)$")
LISTEN = 10.0


async def _scan(client: AtClient, to: str | None) -> list[tuple[str, str]]:
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


async def list_devices(args: argparse.Namespace) -> int:
    print("Searching for devices...", file=sys.stderr)
    client = await connect_client(
        args.from_,
        keys_file=args.key_file,
        root=args.root or args.root_domain,
        ca_file=args.ca_file,
        pass_phrase=getattr(args, "pass_phrase", None),
    )
    try:
        found = await _scan(client, args.to)
        if not found:
            if getattr(args, "output", "text") == "json":
                print(json.dumps({"devices": []}), flush=True)
            print("[X] No devices found\n", file=sys.stderr)
            return 0
        info: dict[tuple[str, str], str] = {}
        active: dict[tuple[str, str], str] = {}
        for owner, dev in found:
            try:
                info[(owner, dev)] = await client.get(f"device_info.{dev}.sshnp", shared_by=owner)
            except NoPortsError:
                info[(owner, dev)] = "{}"
        rx = "|".join(f"heartbeat\\.{re.escape(d)}\\.sshnp" for _o, d in found)
        async with client.monitor(rx) as mon:
            await mon.started(10.0)
            for owner, dev in found:
                await client.notify(owner, f"ping.{dev}", "ping", namespace="sshnp", ttln_ms=60_000)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + min(LISTEN, args.dpt)
            while len(active) < len(found):
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    n = await mon.next(timeout=left)
                except PeerTimeoutError:
                    break
                m = re.match(r"heartbeat\.(.+)\.sshnp$", n.short_key)
                if m and n.value is not None:
                    active[((n.from_atsign or "").lower(), m.group(1))] = n.value
        if getattr(args, "output", "text") == "json":
            print(json.dumps({"devices": _rows(found, active, info)}), flush=True)
        print("Active Devices:", file=sys.stderr)
        _print(found, active, active, present=True, show_owner=not args.to)
        print("Inactive Devices:", file=sys.stderr)
        _print(found, active, info, present=False, show_owner=not args.to)
        return 0
    finally:
        await client.close()


def _v(version: str) -> str:
    """The official prints ``v<version>``; a non-numeric version (``c0.1.0``) stays as is."""
    return f"v{version}" if version[:1].isdigit() else version


def _rows(found, active, info) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for key in found:
        owner, dev = key
        try:
            d = parse_ping_response(active.get(key) or info.get(key) or "{}")
            ver, core, services = d.version, d.core_version, list(d.allowed_services)
        except NoPortsError:
            ver, core, services = "", "", []
        rows.append({"device": dev, "atsign": owner, "active": key in active, "version": ver,
                     "corePackageVersion": core, "allowedServices": services})  # fmt: skip
    return rows


def _print(found, active, data, *, present: bool, show_owner: bool) -> None:
    rows = [k for k in found if (k in active) == present]
    if not rows:
        print("  No devices found", file=sys.stderr)
        return
    for key in rows:
        owner, dev = key
        try:
            d = parse_ping_response(data.get(key) or "{}")
            ver = f" - {_v(d.version)} (core {_v(d.core_version or '?')})" if d.version else ""
        except NoPortsError:
            ver = ""
        name = f"{dev}{owner}" if show_owner else dev
        print(f"  {name}{ver}", file=sys.stderr)


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
        found = await _scan(client, daemon)
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
