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

from ..errors import NoPortsError, PeerTimeoutError
from ..session.client import connect_client
from ..session.devices import (  # noqa: F401 - re-exported for callers of this module
    DaemonSilentError,
    DeviceNotFoundError,
    explain_no_answer,
    scan_devices,
)
from ..session.features import parse_ping_response

LISTEN = 10.0


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
        found = await scan_devices(client, args.to)
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


