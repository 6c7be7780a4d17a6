"""``sshnp --list-devices`` (spec 3.4): find shared device_info records, ping, report on stderr.

With ``-t``: the device atSign's ``device_info.<dev>.sshnp`` records shared with us (remote
scan, plus our cached copies); without: every such record our own atServer holds (cached
shares), grouped by sharer.
Each device gets a ``ping``; those answering a ``heartbeat`` within the window are Active.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys

from ..at import commands
from ..at.client import AtClient
from ..errors import NoPortsError, PeerTimeoutError
from ..session.client import connect_client
from ..session.features import parse_ping_response

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
    )
    try:
        found = await _scan(client, args.to)
        if not found:
            print("[X] No devices found", file=sys.stderr)
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
        print("Active Devices:", file=sys.stderr)
        _print(found, active, active, present=True)
        print("Inactive Devices:", file=sys.stderr)
        _print(found, active, info, present=False)
        return 0
    finally:
        await client.close()


def _print(found, active, data, *, present: bool) -> None:
    rows = [k for k in found if (k in active) == present]
    if not rows:
        print("  No devices found", file=sys.stderr)
        return
    for key in rows:
        owner, dev = key
        try:
            d = parse_ping_response(data.get(key) or "{}")
            ver = f" - v{d.version} (core v{d.core_version})" if d.version else ""
            services = " ".join(d.allowed_services)
        except NoPortsError:
            ver, services = "", ""
        print(f"  {dev}{owner if owner else ''}{ver}", file=sys.stderr)
        if services:
            print(f"  - allowedServices: {services}", file=sys.stderr)
