"""at_activate: activate an atSign, and enroll / approve further devices (APKAM).

    at_activate -a @alice                              (same as: at_activate onboard -a @alice)
    at_activate onboard -a @alice [-c SECRET | --secret-file FILE]   (prompts on a terminal)
    at_activate status  -a @alice                      (exit 0-4, as the official tool)
    at_activate otp     -a @alice [-e 10m]
    at_activate spp     -a @alice -s PASSCODE [-e 7d]
    at_activate enroll  -a @alice -s PASSCODE -p APP -d DEVICE -n "sshnp:rw,sshrvd:rw" -k FILE
    at_activate list    -a @alice [-s pending|approved|denied|revoked|expired] [-A RX] [-D RX]
    at_activate fetch   -a @alice -i ENROLLMENT_ID
    at_activate approve -a @alice -i ENROLLMENT_ID | -A APP_REGEX | -D DEVICE_REGEX
                        (also: deny, revoke [--force], unrevoke)
    at_activate auto    -a @alice -A APP_REGEX [-D DEVICE_REGEX] [-L 1] [--approve-existing]
    at_activate delete  -a @alice -i ENROLLMENT_ID     (denied, revoked or expired only)

The options are the official at_activate's (short and long names, e.g. -r/--rootServer,
-k/--keys, -s/--passcode, -i/--enrollmentId, -e/--expiry, -A/--arx, -D/--drx); the older
names of this tool still work. -r/--rootServer > NOPORTS_ROOT, --ca-file > NOPORTS_CA_FILE;
--output json prints one JSON object per line on stdout.

Secrets: on a terminal, onboard prompts for the activation secret and enroll for the passcode,
without echo. Otherwise use --secret-file FILE ('-' = stdin), AT_ACTIVATE_SECRET[_FILE] or
AT_ACTIVATE_OTP. A secret given with -c is visible to other local users (ps, /proc) and
draws a warning. Keys files default to ~/.atsign/keys/@alice_key.atKeys and are written 0600
in a 0700 directory, never through a symlink and never over an existing file unless --force.

Exit codes: 0 ok; 1 other failure; 2 usage, or the keys file already exists; 3 refused
(wrong secret or passcode, enrollment denied or revoked, insecure keys file); 4 unknown
atSign, enrollment or keys file, or nothing matched; 5 timed out waiting (e.g. for
approval); 6 protocol error; 7 cannot connect; 130 interrupted. status: 0 publickey found,
1 atServer up but no publickey, 2 atServer unreachable, 3 atSign unknown to the root,
4 root unreachable.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from .. import _compat
from ..at import commands
from ..at import onboard as ob
from ..at.config import ssl_context
from ..at.connection import connect_authenticated, find_atserver
from ..crypto.atkeys import AtKeys
from ..errors import (
    EXIT_NOT_FOUND,
    AtError,
    ConfigError,
    ConnectError,
    NoPortsError,
    PeerTimeoutError,
    SecondaryNotFoundError,
)
from ..fsutil import read_secret
from ..log import setup_logging
from . import activate_steps as steps
from .activate_steps import dart_str
from .common import VersionAction, fail

PROG = steps.PROG
ENV_SECRET = "AT_ACTIVATE_SECRET"
ENV_SECRET_FILE = "AT_ACTIVATE_SECRET_FILE"
ENV_OTP = "AT_ACTIVATE_OTP"
ENV_PASS_PHRASE = "AT_ACTIVATE_PASS_PHRASE"
COMMANDS = (
    "help", "status", "onboard", "otp", "spp", "list", "fetch", "approve", "auto", "deny",
    "revoke", "unrevoke", "delete", "enroll",
)  # fmt: skip
EXPIRY_HELP = 'a duration such as "2d,1h,10m,20s,999ms"'


class NothingMatched(NoPortsError):
    exit_code = EXIT_NOT_FOUND


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action=VersionAction, help="show version and exit")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-a", "--atsign", required=True, help="the atSign, e.g. @alice")
    common.add_argument(
        "-k",
        "--keys",
        type=Path,
        default=None,
        help="the atKeys file to create (onboard, enroll) or use "
        "(default ~/.atsign/keys/@alice_key.atKeys)",
    )
    common.add_argument(
        "-r",
        "--rootServer",
        "--root-server",
        "--root",
        dest="root",
        default=None,
        help="root server host[:port] (default $NOPORTS_ROOT or root.atsign.org:64)",
    )
    common.add_argument(
        "--ca-file", default=None, help="extra CA bundle (default $NOPORTS_CA_FILE)"
    )
    common.add_argument("--output", choices=("text", "json"), default="text", help="stdout format")
    common.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds per server request (default %(default)s)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    common.add_argument("--debug", action="store_true", help="log at DEBUG level")
    common.add_argument("--log-format", choices=("text", "json"), default="text")
    common.add_argument(
        "-P",
        "--passPhrase",
        "--pass-phrase",
        dest="pass_phrase",
        default=None,
        help=f"protect (onboard, enroll) or open the atKeys file with this pass phrase "
        f"(or ${ENV_PASS_PHRASE})",
    )
    common.add_argument(
        "--hashingAlgoType",
        choices=("argon2id",),
        default="argon2id",
        help="pass phrase hashing (argon2id, as official)",
    )
    # official options with nothing to do here (accepted so official command lines work)
    common.add_argument("--mca", type=int, default=10, help=argparse.SUPPRESS)
    common.add_argument("-g", "--registrarUrl", default=None, help=argparse.SUPPRESS)
    common.add_argument(
        "--proxy-fallback-enabled",
        "--no-proxy-fallback-enabled",
        action="store_true",
        help=argparse.SUPPRESS,
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    sub.add_parser("help", help="show this help")
    sub.add_parser(
        "interactive", parents=[common], help="(official; not provided: run the commands directly)"
    )
    sub.add_parser(
        "status",
        parents=[common],
        help="is the atSign known and reachable, with a publickey? (exit 0-4)",
    )

    s = sub.add_parser(
        "onboard", parents=[common], help="first activation with the activation secret"
    )
    s.add_argument(
        "--secret-file",
        default=None,
        help=f"file holding the activation secret ('-' = stdin); or ${ENV_SECRET_FILE}",
    )
    s.add_argument(
        "-c",
        "--cramkey",
        "--license-key",
        "--secret",
        dest="secret",
        default=None,
        help=f"the secret itself (other local users can see it: prefer ${ENV_SECRET})",
    )
    _app_device(s, app_required=False)
    s.add_argument("--force", action="store_true", help="overwrite an existing keys file")
    s.add_argument("-y", "--yes", action="store_true", help="(accepted; no questions asked)")
    s.add_argument("--max-retries", type=int, default=None, help=argparse.SUPPRESS)
    s.add_argument("--allow-bad-registrar-certs", action="store_true", help=argparse.SUPPRESS)

    s = sub.add_parser(
        "otp", parents=[common], help="print a one-time passcode for enrolling a device"
    )
    s.add_argument("-e", "--expiry", default=None, help=f"how long it is valid: {EXPIRY_HELP}")
    s.add_argument("--ttl", type=int, default=None, help="validity in seconds (server default 300)")

    s = sub.add_parser(
        "spp", parents=[common], help="set a semi-permanent passcode for many enrollments"
    )
    s.add_argument("-s", "--spp", required=True, help="6 to 16 letters and digits")
    s.add_argument("-e", "--expiry", default=None, help=f"how long it is valid: {EXPIRY_HELP}")

    s = sub.add_parser(
        "enroll", parents=[common], help="enroll this device with a passcode; wait for approval"
    )
    _app_device(s, app_required=True)
    s.add_argument("-n", "--namespaces", required=True, help='e.g. "sshnp:rw,sshrvd:rw"')
    s.add_argument(
        "-s",
        "--passcode",
        "--otp",
        dest="otp",
        default=None,
        help=f"the OTP or SPP (or ${ENV_OTP}; prompted for on a terminal)",
    )
    s.add_argument("-e", "--expiry", default=None, help=f"lifetime of the new keys: {EXPIRY_HELP}")
    s.add_argument(
        "--wait-timeout",
        type=float,
        default=ob.DEFAULT_WAIT_TIMEOUT,
        help="seconds to wait for approval (default %(default)s)",
    )
    s.add_argument(
        "--poll-interval",
        type=float,
        default=ob.DEFAULT_POLL_INTERVAL,
        help="seconds between approval checks (default %(default)s)",
    )
    s.add_argument("--max-retries", type=int, default=None, help=argparse.SUPPRESS)
    s.add_argument("--force", action="store_true", help="overwrite an existing keys file")

    s = sub.add_parser("list", parents=[common], help="list enrollments")
    s.add_argument(
        "-s",
        "--enrollmentStatus",
        "--status",
        dest="status",
        choices=ob.STATUSES,
        default=None,
        help="only this status",
    )
    _regexes(s)
    for name in ("fetch", "delete"):
        s = sub.add_parser(
            name,
            parents=[common],
            help="show one enrollment"
            if name == "fetch"
            else "delete a denied, revoked or expired enrollment",
        )
        _eid(s, required=True)
    for name, hlp in (
        ("approve", "approve pending enrollments"),
        ("deny", "deny pending enrollments"),
        ("revoke", "revoke approved enrollments"),
        ("unrevoke", "restore revoked enrollments"),
    ):
        s = sub.add_parser(name, parents=[common], help=hlp + " (by -i, -A or -D)")
        _eid(s, required=False)
        _regexes(s)
        if name == "revoke":
            s.add_argument("--force", action="store_true", help="allow revoking our own enrollment")
    s = sub.add_parser(
        "auto", parents=[common], help="listen for new requests and approve those that match"
    )
    _eid(s, required=False, hide=True)
    _regexes(s)
    s.add_argument("-L", "--limit", type=int, default=1, help="stop after this many (default 1)")
    s.add_argument(
        "--approve-existing", action="store_true", help="first approve matching pending requests"
    )
    return p


def _app_device(s: argparse.ArgumentParser, *, app_required: bool) -> None:
    s.add_argument(
        "-p",
        "--app",
        "--app-name",
        dest="app_name",
        required=app_required,
        default=None if app_required else ob.DEFAULT_APP_NAME,
        help="application name",
    )
    s.add_argument(
        "-d",
        "--device",
        "--device-name",
        dest="device_name",
        default=None,
        help="device name (default: host name)",
    )


def _eid(s: argparse.ArgumentParser, *, required: bool, hide: bool = False) -> None:
    s.add_argument(
        "-i",
        "--enrollmentId",
        "--enrollment-id",
        dest="enrollment_id",
        required=required,
        default=None,
        help=argparse.SUPPRESS if hide else "the enrollment id",
    )


def _regexes(s: argparse.ArgumentParser) -> None:
    s.add_argument("-A", "--arx", default=None, help="regular expression on the app name")
    s.add_argument("-D", "--drx", default=None, help="regular expression on the device name")


# ---------------------------------------------------------------------------------------


def _prompt(what: str) -> str | None:
    """Ask on the terminal without echo; None when there is no terminal."""
    if not sys.stdin.isatty():
        return None
    try:
        return getpass.getpass(f"{what}: ").strip() or None
    except (EOFError, OSError):
        return None


def _secret(args: argparse.Namespace) -> str:
    """File > argument > environment > terminal prompt. Never echoed anywhere."""
    env = os.environ
    if args.secret_file:
        return _read_secret_file(args.secret_file)
    if args.secret:
        print(
            f"{PROG}: warning: -c/--cramkey is visible to other local users (ps, /proc); "
            f"prefer the prompt, ${ENV_SECRET} or --secret-file",
            file=sys.stderr,
        )
        return str(args.secret).strip()
    if env.get(ENV_SECRET_FILE):
        return _read_secret_file(env[ENV_SECRET_FILE])
    if env.get(ENV_SECRET):
        return env[ENV_SECRET].strip()
    got = _prompt(f"Activation secret (CRAM key) for {args.atsign}")
    if got:
        return got
    raise ConfigError(
        "no activation secret: run on a terminal to be asked, or use --secret-file FILE, "
        f"${ENV_SECRET} or ${ENV_SECRET_FILE}"
    )


def _passcode(args: argparse.Namespace) -> str:
    got = args.otp or os.environ.get(ENV_OTP) or _prompt(f"Passcode (OTP or SPP) of {args.atsign}")
    if not got:
        raise ConfigError(
            f"no passcode: use -s/--passcode, ${ENV_OTP}, or run on a terminal to be asked "
            f"(make one with `{PROG} otp -a {args.atsign}`)"
        )
    return str(got).strip()


def _read_secret_file(path: str) -> str:
    if path == "-":
        text = sys.stdin.readline()
    else:
        text = read_secret(path, strict_mode=True).decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ConfigError(f"{'stdin' if path == '-' else path} holds no activation secret")
    return lines[-1]  # `noports server add` prints the secret on its last line


def _pass_phrase(args: argparse.Namespace) -> str | None:
    return args.pass_phrase or os.environ.get(ENV_PASS_PHRASE) or None


def _load_keys(args: argparse.Namespace) -> AtKeys:
    path = ob.keys_target(args.atsign, args.keys)
    return AtKeys.load(path, args.atsign, strict_mode=True, pass_phrase=_pass_phrase(args))


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str | None) -> None:
    if args.output == "json":
        print(json.dumps(obj), flush=True)
    elif text is not None:
        print(text, flush=True)


def _info(args: argparse.Namespace, text: str) -> None:
    """Progress lines: stdout in text mode (as the official), stderr with --output json."""
    print(text, file=sys.stdout if args.output == "text" else sys.stderr, flush=True)


async def _status(args: argparse.Namespace) -> int:
    a = commands.atsign(args.atsign)
    ctx = ssl_context(args.ca_file)
    rc, msg = 0, ""
    try:
        address = await find_atserver(a, root=args.root, ssl_ctx=ctx, timeout=args.timeout)
    except SecondaryNotFoundError:
        rc, msg = 3, f"atDirectory has no record for {a}"
    except (NoPortsError, OSError) as exc:
        rc, msg = 4, f"Caught {type(exc).__name__} : {exc}"
    if not rc:
        try:
            pk = await ob.public_key_published(a, root=args.root, ssl_ctx=ctx)
        except (ConnectError, PeerTimeoutError, OSError) as exc:
            rc, msg = 2, f"atServer cannot be reached {a} ({exc})"
        except NoPortsError as exc:
            rc, msg = 2, f"Caught unexpected {type(exc).__name__} : {exc}"
        else:
            if pk:
                msg = f"found public:publickey{a} OK"
            else:
                rc, msg = 1, f"response was {pk}"
        del address
    if args.output == "json":
        print(json.dumps({"atsign": a, "status": rc, "message": msg}), flush=True)
    print(f"returning {rc}: {msg}", file=sys.stderr, flush=True)
    return rc


def _print_list(args: argparse.Namespace, items: list[ob.Enrollment]) -> None:
    if args.output == "json":
        print(json.dumps([e.to_json() for e in items]), flush=True)
        return
    print(f"Found {len(items)} matching enrollment records")
    print(
        "Enrollment ID".ljust(38) + "Status".ljust(10) + "AppName".ljust(20)
        + "DeviceName".ljust(38) + "Namespaces"
    )  # fmt: skip
    for e in items:
        print(
            e.enrollment_id.ljust(38) + e.status.ljust(10) + (e.app_name or "").ljust(20)
            + (e.device_name or "").ljust(38) + dart_str(e.namespaces)
        )  # fmt: skip
    sys.stdout.flush()


async def _select(
    args: argparse.Namespace, mgr: ob.EnrollmentManager, status: str
) -> list[ob.Enrollment]:
    """The enrollments ``-i`` / ``-A`` / ``-D`` name (as the official: -i wins)."""
    if args.enrollment_id:
        return [await mgr.fetch(args.enrollment_id)]
    arx, drx = steps.selection_filters(args)
    got = steps.matching(await mgr.list(status), arx, drx)
    if args.output == "text":
        print(f"Found {len(got)} matching enrollment records", flush=True)
    if not got:
        raise NothingMatched("No matching enrollment(s) found")
    return got


async def _approve_one(args: argparse.Namespace, mgr: ob.EnrollmentManager, eid: str) -> None:
    _emit(args, *steps.approved_event(await mgr.approve(eid)))


async def _auto(args: argparse.Namespace, mgr: ob.EnrollmentManager, keys: AtKeys) -> int:
    arx, drx = steps.auto_filters(args)
    approved = 0
    # listen first, so nothing made while existing ones are approved is missed
    conn = await connect_authenticated(
        keys, root=args.root, ca_file=args.ca_file, timeout=args.timeout,
        command_timeout=args.timeout,
    )  # fmt: skip
    try:
        rx = r".*\.new\.enrollments\.__manage"
        await conn.send(commands.monitor(rx, self_notifications=True))
        seen: set[str] = set()
        if args.approve_existing:
            _info(args, "Approving any requests already there which are a match")
            try:
                for e in await _select(args, mgr, "pending"):
                    _info(args, steps.action_line("approve", e))
                    await _approve_one(args, mgr, e.enrollment_id)
                    seen.add(e.enrollment_id)
                    approved += 1
                    if approved >= args.limit:
                        return 0
            except NothingMatched:
                print("No matching enrollment(s) found", file=sys.stderr)
            _info(args, "")
        _info(args, "Listening for new enrollment requests")
        while approved < args.limit:
            n = await conn.next_notification()
            new = steps.new_request(n.key, n.value, seen)
            if new is None:
                continue
            eid, app, dev = new
            _info(
                args, f'Got enrollment request ID {eid} with appName "{app}" and deviceName "{dev}"'
            )
            filt = f'(app: "{args.arx}" and device: "{args.drx}" respectively)'
            if steps.matches(arx, drx, app, dev):
                _info(args, f"Approving enrollment request which matched the regex filters {filt}")
                await _approve_one(args, mgr, eid)
                approved += 1
                if approved >= args.limit:
                    _info(args, f"Approved {approved} requests - limit was {args.limit} - done.")
            else:
                _info(args, f"Ignoring enrollment request which does not match the regex "
                            f"filters {filt}")  # fmt: skip
            _info(args, "")
    finally:
        await conn.close()
    return 0


async def _onboard(args: argparse.Namespace, net: dict[str, Any]) -> None:
    secret = _secret(args)
    if args.output == "text":
        print(
            "[Information] Onboarding your atSign. This may take up to 2 minutes.",
            file=sys.stderr,
            flush=True,
        )
    done = await ob.onboard(
        args.atsign,
        secret,
        app_name=args.app_name,
        device_name=args.device_name,
        keys_path=args.keys,
        overwrite=args.force,
        timeout=args.timeout,
        pass_phrase=_pass_phrase(args),
        **net,
    )
    _emit(args, *steps.onboarded_event(done))


async def _enroll(args: argparse.Namespace, plan: steps.Plan, net: dict[str, Any]) -> None:
    assert plan.namespaces is not None
    otp = _passcode(args)

    def pending(p: ob.PendingEnrollment) -> None:
        _emit(args, *steps.pending_event(p))
        if args.output == "text":
            print(steps.waiting_hint(p, args.wait_timeout), file=sys.stderr, flush=True)

    if args.output == "text":
        print("Submitting enrollment request", file=sys.stderr, flush=True)
    done = await ob.enroll(
        args.atsign,
        otp,
        app_name=args.app_name,
        device_name=args.device_name or ob.default_device_name(),
        namespaces=plan.namespaces,
        keys_path=args.keys,
        overwrite=args.force,
        wait_timeout=args.wait_timeout,
        interval=args.poll_interval,
        on_pending=pending,
        timeout=args.timeout,
        apkam_keys_expiry_ms=plan.ttl_ms,
        pass_phrase=_pass_phrase(args),
        **net,
    )
    _emit(args, *steps.enrolled_event(done))


async def _manage(args: argparse.Namespace, plan: steps.Plan, mgr: ob.EnrollmentManager) -> None:
    """otp, spp, list, fetch, delete, approve, deny, revoke, unrevoke (auto: :func:`_auto`)."""
    cmd = plan.cmd
    if cmd == "otp":
        _emit(args, *steps.otp_event(await mgr.otp(plan.ttl_ms), plan.ttl_ms))
    elif cmd == "spp":
        _emit(args, *steps.spp_event(await mgr.spp(args.spp, plan.ttl_ms)))
    elif cmd == "list":
        arx, drx = steps.filters(args)
        _print_list(args, steps.matching(await mgr.list(args.status), arx, drx))
    elif cmd == "fetch":
        body = await mgr._call("fetch", args.enrollment_id, {})
        _emit(args, *steps.fetched_event(args.enrollment_id, body))
    elif cmd == "delete":
        _info(args, "Sending delete request")
        st = await mgr.delete(args.enrollment_id)
        _emit(args, *steps.deleted_event(args.enrollment_id, st))
    else:  # approve, deny, revoke, unrevoke
        for e in await _select(args, mgr, steps.SELECT_STATUS.get(cmd, "revoked")):
            _info(args, steps.action_line(cmd, e))
            if cmd == "approve":
                await _approve_one(args, mgr, e.enrollment_id)
                continue
            if cmd == "deny":
                st = await mgr.deny(e.enrollment_id)
            elif cmd == "revoke":
                st = await mgr.revoke(e.enrollment_id, force=args.force)
            else:
                st = await mgr.unrevoke(e.enrollment_id)
            _emit(args, *steps.verdict_event(e.enrollment_id, st))


async def _run(args: argparse.Namespace) -> int:
    plan = steps.plan(args)  # every check before a secret is read or a socket opened
    net: dict[str, Any] = {"root": args.root, "ca_file": args.ca_file}
    if plan.cmd == "status":
        return await _status(args)
    if plan.cmd == "onboard":
        await _onboard(args, net)
        return 0
    if plan.cmd == "enroll":
        await _enroll(args, plan, net)
        return 0
    keys = _load_keys(args)
    async with await ob.EnrollmentManager.connect(keys, timeout=args.timeout, **net) as mgr:
        if plan.cmd == "auto":
            return await _auto(args, mgr, keys)
        await _manage(args, plan, mgr)
    return 0


def normalise_argv(argv: list[str]) -> list[str]:
    """The official bare form: ``at_activate -a @x ...`` means ``at_activate onboard -a @x``."""
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        return ["onboard", *argv]
    return argv


def main(argv: list[str] | None = None) -> int:
    argv = normalise_argv(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    if not argv:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: you must supply a command (one of: {', '.join(COMMANDS)})",
              file=sys.stderr)  # fmt: skip
        return 2
    args = parser.parse_args(argv)
    if args.cmd == "help":
        parser.print_help()
        return 0
    if args.cmd == "interactive":
        print(
            f"{PROG}: error: interactive mode is not provided; run the commands directly "
            f"(e.g. {PROG} list -a {args.atsign} -s pending, then approve -i ID)",
            file=sys.stderr,
        )
        return 2
    setup_logging(args)
    try:
        return int(_compat.run(_run(args)))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except NothingMatched as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except AtError as exc:
        return fail(PROG, exc)
    except (NoPortsError, OSError) as exc:
        return fail(PROG, exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
