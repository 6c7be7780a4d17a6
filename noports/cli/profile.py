"""``noports profile``: desktop-app profiles on the command line.

    noports profile list   -a @me [--output json]      (profiles stored in the atServer)
    noports profile list   --file export.yaml          (profiles in an export document)
    noports profile import -a @me FILE [--replace]     (JSON or YAML export -> the atServer)
    noports profile export -a @me [NAME...] [--format json|yaml] [-o FILE]
    noports profile run    -a @me NAME_OR_FILE [--name NAME] [-r @relay]

Profiles live where the NoPorts desktop app keeps them (``<uuid>.profiles.noports`` self keys),
so a profile made in the desktop app runs here and the other way round. ``run`` opens the
profile's tunnel in the foreground as npt does; Ctrl-C stops it. A NAME is a profile's
display name or its uuid.

Exit codes: 0 ok; 1 error; 2 usage or a bad document; 3 auth; 4 unknown profile or file;
5 timeout; 6 protocol; 7 connect.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from ..errors import EXIT_NOT_FOUND, ConfigError, LocalError, NoPortsError
from ..log import setup_logging
from .common import add_common, fail
from .options import add_root_flags, root_of

PROG = "noports profile"
DEFAULT_RELAY = "@rv_am"


class ProfileNotFoundError(LocalError):
    """No profile (or document file) of that name."""

    exit_code = EXIT_NOT_FOUND


def _client_flags(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("-a", "--atsign", required=required, metavar="@ME", help="your (client) atSign")
    p.add_argument(
        "-k",
        "--key-file",
        "--keyFile",
        dest="key_file",
        default=None,
        help="atKeys file (default ~/.atsign/keys/<atsign>_key.atKeys)",
    )
    p.add_argument(
        "-P",
        "--pass-phrase",
        dest="pass_phrase",
        default=None,
        help="pass phrase of a password-protected atKeys file (prefer the environment: "
        "NOPORTS_PROFILE_PASS_PHRASE)",
    )
    add_root_flags(p)
    add_common(p)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0].split(": ", 1)[1])
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    ls = sub.add_parser("list", help="list profiles (the atServer's, or a file's with --file)")
    ls.add_argument("--file", default=None, help="an export document (JSON or YAML)")
    ls.add_argument("--output", choices=("text", "json"), default="text", help="output format")
    _client_flags(ls, required=False)
    im = sub.add_parser("import", help="store the profiles of an export document in the atServer")
    im.add_argument("file", metavar="FILE", help="export document (JSON or YAML)")
    im.add_argument("--format", choices=("json", "yaml"), default=None, help="document type")
    im.add_argument(
        "--replace",
        action="store_true",
        help="overwrite a stored profile of the same name (keeps its uuid); default: add, as the "
        "desktop app's import does",
    )
    im.add_argument("--output", choices=("text", "json"), default="text", help="output format")
    _client_flags(im)
    ex = sub.add_parser("export", help="write profiles from the atServer as an export document")
    ex.add_argument("names", nargs="*", metavar="NAME", help="profiles to export (default all)")
    ex.add_argument("--format", choices=("json", "yaml"), default=None,
                    help="document type (default from -o's extension, else yaml)")  # fmt: skip
    ex.add_argument("-o", "--out", default=None, metavar="FILE", help="write here (default stdout)")
    _client_flags(ex)
    rn = sub.add_parser("run", help="run one profile's tunnel in the foreground (Ctrl-C stops)")
    rn.add_argument("target", metavar="NAME_OR_FILE", help="a stored profile or an export document")
    rn.add_argument("--name", default=None, help="the profile to run from a multi-profile FILE")
    rn.add_argument("-r", "--srvd", default=None, metavar="@RELAY",
                    help="relay atSign (default the profile's, else the desktop settings', "
                    f"else {DEFAULT_RELAY})")  # fmt: skip
    rn.add_argument("-q", "--quiet", action="store_true", help="print only the address line")
    _client_flags(rn)
    return p


# -- helpers --------------------------------------------------------------------------------


def _read_file(path: str, fmt: str | None = None) -> list[Any]:
    from ..profiles import parse_document

    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ProfileNotFoundError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    try:
        return parse_document(data, fmt, filename=path)
    except ConfigError as exc:
        raise type(exc)(f"{path}: {exc}") from None


async def _client(args: argparse.Namespace) -> Any:
    from ..session.client import connect_client

    return await connect_client(
        args.atsign,
        keys_file=args.key_file,
        root=root_of(args),
        ca_file=args.ca_file,
        pass_phrase=args.pass_phrase or os.environ.get("NOPORTS_PROFILE_PASS_PHRASE") or None,
    )


def _pick(profiles: list[Any], names: list[str]) -> list[Any]:
    out = []
    for n in names:
        hits = [p for p in profiles if n in (p.uuid, p.displayName)]
        if not hits:
            raise ProfileNotFoundError(f"no profile named {n!r}")
        if len(hits) > 1:
            uuids = ", ".join(p.uuid for p in hits)
            raise ConfigError(f"{len(hits)} profiles are named {n!r}; use a uuid ({uuids})")
        out.append(hits[0])
    return out


def _table(profiles: list[Any]) -> str:
    rows = [("NAME", "DEVICE", "RELAY", "REMOTE", "LOCAL", "UUID")]
    for p in profiles:
        rows.append((
            p.displayName,
            f"{p.deviceName}{p.sshnpdAtsign}",
            p.relayAtsign or "-",
            f"{p.remoteHost}:{p.remotePort}",
            f"{p.localHost}:{p.localPort}",
            p.uuid,
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


# -- commands -------------------------------------------------------------------------------


async def _list(args: argparse.Namespace) -> int:
    from ..profiles.store import ProfileStore

    errors: list[str] = []
    if args.file:
        profiles = _read_file(args.file)
    else:
        if not args.atsign:
            raise ConfigError("give -a/--atsign (profiles in the atServer) or --file")
        client = await _client(args)
        try:
            store = ProfileStore(client)
            profiles = await store.list()
            errors = store.errors
        finally:
            await client.close()
    if args.output == "json":
        print(json.dumps({"profiles": [p.to_json() for p in profiles], "errors": errors}))
    else:
        print(_table(profiles))
        for e in errors:
            print(f"{PROG}: warning: unreadable profile {e}", file=sys.stderr)
    return 0


async def _import(args: argparse.Namespace) -> int:
    from ..profiles.store import ProfileStore

    profiles = _read_file(args.file, args.format)
    client = await _client(args)
    try:
        store = ProfileStore(client)
        if args.replace:
            by_name = {p.displayName: p.uuid for p in await store.list()}
            profiles = [p.copy(uuid=by_name.get(p.displayName, p.uuid)) for p in profiles]
        for p in profiles:
            await store.put(p)
    finally:
        await client.close()
    if args.output == "json":
        print(json.dumps({"stored": [p.to_json() for p in profiles]}))
    else:
        for p in profiles:
            print(f"stored {p.displayName!r} as {p.uuid} ({p.deviceName}{p.sshnpdAtsign})")
        print(f"{len(profiles)} profile(s) imported into {client.atsign}")
    return 0


async def _export(args: argparse.Namespace) -> int:
    from ..profiles import dump_document
    from ..profiles.store import ProfileStore

    fmt = args.format
    if fmt is None and args.out and args.out.lower().endswith(".json"):
        fmt = "json"
    fmt = fmt or "yaml"
    client = await _client(args)
    try:
        profiles = await ProfileStore(client).list()
    finally:
        await client.close()
    if args.names:
        profiles = _pick(profiles, args.names)
    text = dump_document(profiles, fmt)
    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise ConfigError(f"{args.out}: {exc.strerror}") from None
        print(f"wrote {len(profiles)} profile(s) to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


async def _resolve_run(args: argparse.Namespace) -> tuple[Any, str]:
    """The profile to run and its relay."""
    from ..profiles.store import ProfileStore

    relay_default = DEFAULT_RELAY
    if os.path.isfile(args.target):
        profiles = _read_file(args.target)
        if args.name:
            (profile,) = _pick(profiles, [args.name])
        elif len(profiles) == 1:
            profile = profiles[0]
        else:
            names = ", ".join(repr(p.displayName) for p in profiles) or "none"
            raise ConfigError(
                f"{args.target} holds {len(profiles)} profiles ({names}); pick one with --name"
            )
    else:
        if os.sep in args.target or args.target.lower().endswith((".json", ".yaml", ".yml")):
            raise ProfileNotFoundError(f"{args.target}: no such file")
        client = await _client(args)
        try:
            store = ProfileStore(client)
            (profile,) = _pick(await store.list(), [args.name or args.target])
            relay_default = str((await store.settings()).get("relayAtsign") or DEFAULT_RELAY)
        finally:
            await client.close()
    return profile, args.srvd or profile.relayAtsign or relay_default


async def _run(args: argparse.Namespace) -> int:
    from ..profiles.runner import TUNNEL_TIMEOUT, check_local_port
    from ..session.client import SessionSpec, establish_any
    from ..session.features import npt_required_features
    from ..tunnel import ClientMulti

    profile, relay = await _resolve_run(args)
    check_local_port(profile.localHost, profile.localPort)  # before any network step
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    retry = 5.0
    while True:
        client = await _client(args)
        try:
            spec = SessionSpec(
                kind="npt",
                daemon=profile.sshnpdAtsign,
                device=profile.deviceName,
                relay=relay,
                required=npt_required_features(timeout_s=TUNNEL_TIMEOUT),
                remote_host=profile.remoteHost,
                remote_port=profile.remotePort,
                timeout_ms=int(TUNNEL_TIMEOUT * 1000),
                relay_auth_mode="escr",
                ram_fallback=not profile.only443,
                only443=profile.only443,
            )
            say(f"{profile.displayName}: {profile.deviceName}{profile.sshnpdAtsign} via {relay}")
            est = await establish_any(client, spec, progress=say)
            cm = await ClientMulti.open(
                est.relay_host,
                est.relay_port,
                auth_line=est.auth_line,
                crypto=est.crypto,
                local_host=profile.localHost,
                local_port=profile.localPort,
                timeout=TUNNEL_TIMEOUT,
            )
            try:
                print(f"{profile.displayName}: listening on {cm.host}:{cm.port}", flush=True)
                await cm.wait()
            finally:
                await cm.close()
        except (NoPortsError, OSError) as exc:
            if not profile.keepAlive:
                raise
            say(f"session failed: {exc}; retrying in {retry:.0f} s (keep-alive)")
        finally:
            await client.close()
        if not profile.keepAlive:
            return 0
        await asyncio.sleep(retry)


async def _foreground(args: argparse.Namespace) -> int:
    """``run`` until the tunnel ends; SIGTERM stops it as Ctrl-C does (exit 0)."""
    import signal

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await _run(args)
    except asyncio.CancelledError:
        print(f"{PROG}: stopped", file=sys.stderr)
        return 0
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


COMMANDS = {"list": _list, "import": _import, "export": _export, "run": _foreground}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    try:
        return asyncio.run(COMMANDS[args.cmd](args))
    except KeyboardInterrupt:
        print(f"{PROG}: stopped", file=sys.stderr)
        return 0
    except (NoPortsError, OSError) as exc:
        return fail(PROG, exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
