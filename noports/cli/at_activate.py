"""``at_activate``: activate an atSign, and enroll / approve further devices (APKAM).

    at_activate onboard -a @alice --secret-file FILE     (or AT_ACTIVATE_SECRET[_FILE] in the env)
    at_activate otp     -a @alice [--ttl SECONDS]
    at_activate enroll  -a @alice -p APP -d DEVICE -n "sshnp:rw,sshrvd:rw" --otp X [-k FILE]
    at_activate list    -a @alice [--status pending|approved|denied|revoked|expired]
    at_activate approve -a @alice -i ENROLLMENT_ID     (also: deny, revoke [--force])

Every command honours ``-r/--root`` > ``NOPORTS_ROOT`` and ``--ca-file`` > ``NOPORTS_CA_FILE``,
and ``--output json`` (one JSON object per line on stdout). Keys files default to
``~/.atsign/keys/@alice_key.atKeys`` and are written 0600 in a 0700 directory, never through a
symlink and never over an existing file unless ``--force``.

Why the secret has three inputs and a warning on one: a command-line argument is readable by
every local user in ``/proc/<pid>/cmdline`` (and lands in shell history), so ``--secret`` /
``-c`` exist only for compatibility with the official tool and print a warning; the
environment (``AT_ACTIVATE_SECRET``) is private to the user, and a 0600 file or stdin
(``--secret-file -``) is best. An OTP is single use and expires in minutes, so ``--otp`` is
accepted without a warning (``AT_ACTIVATE_OTP`` also works).

Exit codes: 0 ok; 1 other failure; 2 usage, or the keys file already exists; 3 refused
(wrong secret or OTP, enrollment denied or revoked, insecure keys file); 4 unknown atSign,
enrollment or keys file; 5 timed out waiting (e.g. for approval); 6 protocol error;
7 cannot connect; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .. import _compat
from ..at import onboard as ob
from ..crypto.atkeys import AtKeys
from ..errors import ConfigError, NoPortsError
from ..fsutil import read_secret
from ..log import setup_logging
from .common import VersionAction, fail

PROG = "at_activate"
ENV_SECRET = "AT_ACTIVATE_SECRET"
ENV_SECRET_FILE = "AT_ACTIVATE_SECRET_FILE"
ENV_OTP = "AT_ACTIVATE_OTP"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0].replace("``", ""),
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
        help="the .atKeys file (default ~/.atsign/keys/@alice_key.atKeys)",
    )
    common.add_argument(
        "-r",
        "--root",
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
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

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
        "--secret",
        "--cramkey",
        dest="secret",
        default=None,
        help=f"the secret itself (other local users can see it: prefer ${ENV_SECRET})",
    )
    _app_device(s, app_required=False)
    s.add_argument("--force", action="store_true", help="overwrite an existing keys file")

    s = sub.add_parser(
        "otp", parents=[common], help="print a one-time passcode for enrolling a device"
    )
    s.add_argument("--ttl", type=int, default=None, help="validity in seconds (server default 300)")

    s = sub.add_parser(
        "enroll", parents=[common], help="enroll this device with an OTP and wait for approval"
    )
    _app_device(s, app_required=True)
    s.add_argument("-n", "--namespaces", required=True, help='e.g. "sshnp:rw,sshrvd:rw"')
    s.add_argument("-s", "--otp", default=None, help=f"the one-time passcode (or ${ENV_OTP})")
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
    s.add_argument("--force", action="store_true", help="overwrite an existing keys file")

    s = sub.add_parser("list", parents=[common], help="list enrollments")
    s.add_argument("--status", choices=ob.STATUSES, default=None, help="only this status")
    for name, hlp in (
        ("approve", "approve a pending enrollment"),
        ("deny", "deny a pending enrollment"),
        ("revoke", "revoke an approved enrollment"),
    ):
        s = sub.add_parser(name, parents=[common], help=hlp)
        s.add_argument("-i", "--enrollment-id", required=True)
        if name == "revoke":
            s.add_argument("--force", action="store_true", help="allow revoking our own enrollment")
    return p


def _app_device(s: argparse.ArgumentParser, *, app_required: bool) -> None:
    s.add_argument(
        "-p",
        "--app-name",
        required=app_required,
        default=None if app_required else ob.DEFAULT_APP_NAME,
        help="application name",
    )
    s.add_argument("-d", "--device-name", default=None, help="device name (default: host name)")


# ---------------------------------------------------------------------------------------


def _secret(args: argparse.Namespace) -> str:
    """CLI > environment; a file or stdin beats an argument. Never echoed anywhere."""
    env = os.environ
    if args.secret_file:
        return _read_secret_file(args.secret_file)
    if args.secret:
        print(
            f"{PROG}: warning: --secret is visible to other local users (ps, /proc); "
            f"prefer ${ENV_SECRET} or --secret-file",
            file=sys.stderr,
        )
        return str(args.secret).strip()
    if env.get(ENV_SECRET_FILE):
        return _read_secret_file(env[ENV_SECRET_FILE])
    if env.get(ENV_SECRET):
        return env[ENV_SECRET].strip()
    raise ConfigError(
        f"no activation secret: use --secret-file FILE, ${ENV_SECRET} or ${ENV_SECRET_FILE}"
    )


def _read_secret_file(path: str) -> str:
    if path == "-":
        text = sys.stdin.readline()
    else:
        text = read_secret(path, strict_mode=True).decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ConfigError(f"{'stdin' if path == '-' else path} holds no activation secret")
    return lines[-1]  # `noports server add` prints the secret on its last line


def _load_keys(args: argparse.Namespace) -> AtKeys:
    path = ob.keys_target(args.atsign, args.keys)
    return AtKeys.load(path, args.atsign, strict_mode=True)


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj) if args.output == "json" else text, flush=True)


async def _run(args: argparse.Namespace) -> int:
    net: dict[str, Any] = {"root": args.root, "ca_file": args.ca_file}
    if args.cmd == "onboard":
        done = await ob.onboard(
            args.atsign,
            _secret(args),
            app_name=args.app_name,
            device_name=args.device_name,
            keys_path=args.keys,
            overwrite=args.force,
            timeout=args.timeout,
            **net,
        )
        _emit(
            args,
            {
                "atsign": done.keys.atsign,
                "enrollmentId": done.enrollment_id,
                "keysFile": str(done.path),
                "status": "activated",
            },
            f"{done.keys.atsign} activated; keys saved to {done.path}",
        )
        return 0
    if args.cmd == "enroll":
        otp = args.otp or os.environ.get(ENV_OTP) or ""
        if not otp:
            raise ConfigError(f"no OTP: use --otp or ${ENV_OTP} (make one with `{PROG} otp`)")
        namespaces = ob.parse_namespaces(args.namespaces)

        def pending(p: ob.PendingEnrollment) -> None:
            _emit(
                args,
                {"enrollmentId": p.enrollment_id, "status": "pending"},
                f"enrollment {p.enrollment_id} pending; approve it with: "
                f"{PROG} approve -a {p.atsign} -i {p.enrollment_id}",
            )

        done = await ob.enroll(
            args.atsign,
            otp,
            app_name=args.app_name,
            device_name=args.device_name or ob.default_device_name(),
            namespaces=namespaces,
            keys_path=args.keys,
            overwrite=args.force,
            wait_timeout=args.wait_timeout,
            interval=args.poll_interval,
            on_pending=pending,
            timeout=args.timeout,
            **net,
        )
        _emit(
            args,
            {"enrollmentId": done.enrollment_id, "status": "approved", "keysFile": str(done.path)},
            f"enrollment {done.enrollment_id} approved; keys saved to {done.path}",
        )
        return 0
    keys = _load_keys(args)
    async with await ob.EnrollmentManager.connect(keys, timeout=args.timeout, **net) as mgr:
        if args.cmd == "otp":
            ttl = None if args.ttl is None else args.ttl * 1000
            if ttl is not None and ttl <= 0:
                raise ConfigError("--ttl must be positive")
            code = await mgr.otp(ttl)
            _emit(args, {"otp": code, "ttlSeconds": args.ttl}, code)
        elif args.cmd == "list":
            items = await mgr.list(args.status)
            if args.output == "json":
                print(json.dumps([e.to_json() for e in items]), flush=True)
            else:
                for e in items:
                    ns = ",".join(f"{k}:{v}" for k, v in e.namespaces.items())
                    print(f"{e.enrollment_id}  {e.status:<8}  {e.app_name}  {e.device_name}  {ns}")
        elif args.cmd == "approve":
            e = await mgr.approve(args.enrollment_id)
            _emit(
                args,
                {"enrollmentId": e.enrollment_id, "status": e.status, "namespaces": e.namespaces},
                f"approved {e.enrollment_id} ({e.app_name} on {e.device_name}, namespaces "
                + ",".join(f"{k}:{v}" for k, v in e.namespaces.items())
                + ")",
            )
        elif args.cmd == "deny":
            st = await mgr.deny(args.enrollment_id)
            _emit(
                args,
                {"enrollmentId": args.enrollment_id, "status": st},
                f"denied {args.enrollment_id}",
            )
        else:
            st = await mgr.revoke(args.enrollment_id, force=args.force)
            _emit(
                args,
                {"enrollmentId": args.enrollment_id, "status": st},
                f"revoked {args.enrollment_id}",
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    try:
        return int(_compat.run(_run(args)))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (NoPortsError, OSError) as exc:
        return fail(PROG, exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
