"""``npa``: the NoPorts policy service (spec 8).

    npa -a @policy --policy FILE.toml|FILE.yaml [--daemon-atsigns @d1,@d2] [-k KEYS]
        [--audit-log FILE.jsonl] [--root HOST:PORT] [--ca-file F] [-v]

Daemons started with ``sshnpd -p @policy`` ask it, for every client request, whether that
client may use the device and which ``host:port`` targets it may open; the answers come
from the policy file (TOML, or the official npp_file YAML), which is re-read when it
changes (a broken edit keeps the last good policy and logs the error). Every decision is
logged, written to ``--audit-log`` (JSON lines) if given, and sent to the policy atSign
itself as a ``<epochMillis>.logs.policy.sshnp`` notification.

``--daemon-atsigns`` limits which daemons are answered (others get no reply). The default,
as the official NPA, is to answer any daemon: a daemon can only ask about itself, and the
policy file decides what it gets (nothing, unless listed there).

``--max-rate`` (default 20 requests/s per daemon atSign, bursts of 100) drops a flood
from one sender without starving the others.

On start it prints ``npa: @policy monitor started ...`` on stderr. Flags can also come from
``NOPORTS_NPA_<FLAG>`` variables or a TOML ``--config`` file. SIGHUP re-reads them and the
policy file (a broken one is logged and the running configuration kept); ``--check-config``
validates them and the policy file, then exits. Exit codes: 0 stopped by SIGTERM/SIGINT, or
a valid configuration; 2 usage, a broken policy file at start or an invalid configuration;
3 authentication refused; 4 keys file missing; 7 cannot connect.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from typing import TYPE_CHECKING

from .. import _compat
from ..config import parse_args
from ..errors import ConfigError, ConnectError, NoPortsError
from ..log import escape, setup_logging
from ..metrics import add_option as add_metrics_option

if TYPE_CHECKING:
    from ..npa.service import NpaSettings
from .common import add_common, fail

PROG = "npa"
log = logging.getLogger("noports.npa")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog=__doc__.split("\n\n", 1)[1].replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.add_argument("-a", "--atsign", required=True, help="the policy service's atSign")
    p.add_argument(
        "--policy",
        "--yaml",
        required=True,
        metavar="FILE",
        help="policy file: the official npp_file YAML (.yaml/.yml, also --yaml as npp_file) "
        "or TOML",
    )
    p.add_argument(
        "--daemon-atsigns",
        default="",
        metavar="LIST",
        help="comma-separated daemon atSigns to answer (default: any daemon)",
    )
    p.add_argument(
        "-k",
        "--key-file",
        default=None,
        help="keys file (default ~/.atsign/keys/<atSign>_key.atKeys)",
    )
    p.add_argument(
        "--audit-log", default=None, metavar="FILE", help="append decisions as JSON lines"
    )
    p.add_argument(
        "--no-self-audit",
        dest="self_audit",
        action="store_false",
        default=True,
        help="do not send the <ms>.logs.policy.sshnp audit notification to ourselves",
    )
    p.add_argument(
        "--max-rate",
        type=float,
        default=20.0,
        metavar="N",
        help="requests per second answered per daemon atSign, bursts of 5x (0 = no limit)",
    )
    p.add_argument(
        "-r",
        "--root-server",
        "--root",
        "--root-domain",
        dest="root",
        default=None,
        help="root server host[:port] (default $NOPORTS_ROOT or root.atsign.org:64)",
    )
    p.add_argument("--ca-file", default=None, help="extra CA bundle (default $NOPORTS_CA_FILE)")
    p.add_argument(
        "--check-config",
        action="store_true",
        default=False,
        help="validate the command line, environment, config and policy files, then exit "
        "(0 valid, 2 invalid)",
    )
    add_metrics_option(p)
    return p


class _CheckParser(argparse.ArgumentParser):
    """``--check-config``: a usage error is one line on stderr (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {escape(message)}\n")


class _ReloadParser(argparse.ArgumentParser):
    """On reload a bad configuration must not exit the running service."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(escape(message))

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise ConfigError(escape((message or f"exit {status}").strip()))


def settings_from(args: argparse.Namespace) -> NpaSettings:
    """Validated settings (the policy file is parsed); ConfigError when invalid."""
    from ..names import InvalidNameError, validate_atsign
    from ..npa.service import NpaSettings

    try:
        me = validate_atsign(args.atsign, add_at=True)
    except InvalidNameError as exc:
        raise ConfigError(f"-a: {exc}") from None
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    settings = NpaSettings(
        atsign=me,
        policy=args.policy,
        daemon_atsigns=tuple(_atsigns(args.daemon_atsigns)),
        audit_log=args.audit_log,
        self_audit=args.self_audit,
        max_rate=args.max_rate,
        log_level=level,
        key_file=args.key_file,
        root=args.root,
        ca_file=args.ca_file,
    )
    settings.validate()
    return settings


def reload_settings(argv: list[str] | None) -> NpaSettings:
    """Settings from the same command line, the environment and the files as they are now."""
    parser = build_parser()
    parser.__class__ = _ReloadParser
    return settings_from(parse_args(parser, PROG, argv))


def _atsigns(text: str) -> list[str]:
    from ..names import InvalidNameError, validate_atsign

    out = []
    for part in text.split(","):
        if part.strip():
            try:
                out.append(validate_atsign(part.strip(), add_at=True))
            except InvalidNameError as exc:
                raise ConfigError(f"--daemon-atsigns: {exc}") from None
    return out


async def _serve(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from ..at.client import AtClient
    from ..npa.policy import PolicyStore
    from ..npa.service import AuditLog, NpaService
    from ..sdnotify import notify as notify_systemd
    from ..sdnotify import watchdog

    settings = settings_from(args)  # a broken policy file at start: one clear line, exit 2
    me, daemons = settings.atsign, list(settings.daemon_atsigns)
    if args.metrics:
        from ..metrics import parse_address

        parse_address(args.metrics)  # a bad address: exit 2 before connecting
    store = PolicyStore(args.policy)
    audit = AuditLog(args.audit_log) if args.audit_log else None
    client = await AtClient.connect(
        me, keys_file=args.key_file, root=args.root, ca_file=args.ca_file
    )
    service = NpaService(
        client,
        store,
        daemon_atsigns=daemons,
        audit_log=audit,
        self_audit=args.self_audit,
        max_rate=args.max_rate,
    )
    observer = None
    if args.metrics:
        from ..npa.observe import Observer

        observer = Observer(service)
        try:
            observer.start(args.metrics)
        except ConfigError:
            await client.close()
            raise
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    current = [settings]

    def reload() -> None:
        """SIGHUP: validate the configuration as it is now, then apply what can change."""
        try:
            new = reload_settings(argv)
            changed, restart = service.reload(current[0], new)
        except (NoPortsError, ValueError, OSError) as exc:
            msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            log.error("configuration reload failed, keeping the running configuration: %s", msg)
            return
        for name in restart:
            log.warning("reload: %s changed; it takes effect after a restart", name)
        current[0] = dataclasses.replace(
            new, **{n: getattr(current[0], n) for n in new.RESTART_ONLY}
        )
        log.warning(
            "configuration reloaded: %s (policy version %s)",
            ", ".join(changed) or "no change",
            service.store.policy.digest,
            extra={"fields": {"event": "config_reloaded", "changed": changed,
                              "restart_needed": restart}},
        )

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reload)

    def ready() -> None:
        if observer is not None:
            observer.monitor_running = True
        notify_systemd("READY=1", f"STATUS=npa {me} ready")
        dog.append(loop.create_task(watchdog()))
        who = ", ".join(daemons) if daemons else "any daemon"
        print(
            f"npa: {me} monitor started; policy {escape(args.policy)} "
            f"(version {store.policy.digest}); answering {who}",
            file=sys.stderr,
            flush=True,
        )

    dog: list[asyncio.Task[None]] = []
    task = loop.create_task(service.run(ready))
    waiter = loop.create_task(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        notify_systemd("STOPPING=1")
        for t in (waiter, task, *dog):
            t.cancel()
        outcome = (await asyncio.gather(task, return_exceptions=True))[0]
        if observer is not None:
            observer.monitor_running = False
            observer.close()
        await client.close()
        if service.audit_log is not None:
            service.audit_log.close()
        if audit is not None:
            audit.close()
    if not stop.is_set():
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            raise outcome
        raise ConnectError("the notification monitor stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if "--check-config" in argv:
        parser.__class__ = _CheckParser
    args = parse_args(parser, PROG, argv)
    if args.check_config:
        try:
            settings_from(args)
        except ConfigError as exc:
            parser.error(str(exc))
        print(f"{PROG}: configuration is valid (policy {escape(args.policy)})")
        return 0
    setup_logging(args)
    try:
        return _compat.run(_serve(args, argv))
    except KeyboardInterrupt:
        return 130
    except (NoPortsError, OSError) as exc:
        return fail(PROG, exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
