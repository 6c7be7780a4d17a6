"""``noports service install PROGRAM``: a hardened systemd unit, its TOML config file and the
service user, for srvd, sshnpd (one instance per device), npa or the embedded server.

    noports service install srvd --set atsign=@relay --set ip=relay.example.com
    noports service install sshnpd --instance pi4 --set atsign=@pi --set managers=@me \\
        --set device=pi4 --dry-run

Every action is printed; ``--dry-run`` prints and changes nothing. ``--root DIR`` writes under
DIR instead of / (packaging, tests) and then never creates users. An existing config file is
kept unless ``--force``. The unit templates are packaging/systemd/ (installed with the package
into share/noports/systemd); ExecStart is pointed at the programs of this installation.

Exit codes: 0 done, 1 a step failed, 2 usage (unknown program, key or bad value).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pwd
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from ..config import load_toml, option_table, parse_bool
from ..errors import EXIT_OK, ConfigError
from .common import add_common

PROG = "noports service"
# program -> (unit template, config path under /etc/noports ({i} = instance), parser factory)
PROGRAMS: dict[str, tuple[str, str, str]] = {
    "srvd": ("noports-srvd.service", "srvd.toml", "noports.cli.srvd:build_parser"),
    "sshnpd": ("noports-sshnpd@.service", "sshnpd/{i}.toml", "noports.cli.sshnpd:build_parser"),
    "npa": ("noports-npa.service", "npa.toml", "noports.cli.npa:build_parser"),
    "server": ("noports-server.service", "", "noports.cli.server:_run_parser"),
}
TEMPLATE_BIN = "/opt/noports/bin/"
USER = "noports"
_INSTANCE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Install a systemd unit, its config file and the service user.",
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("install", help="write the unit and config, create the user")
    i.add_argument("program", choices=sorted(PROGRAMS))
    i.add_argument("--instance", help="sshnpd only: the instance (device) name")
    i.add_argument(
        "--set",
        dest="values",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config value (long option name without --); repeatable",
    )
    i.add_argument("--root", default="/", help="install under this directory (default /)")
    i.add_argument("--bin-dir", help="where the programs are (default: this installation's)")
    i.add_argument("--force", action="store_true", help="overwrite an existing config file")
    i.add_argument("--dry-run", action="store_true", help="print what would be done, only")
    return p


def templates_dir() -> Path:
    for d in (
        Path(sysconfig.get_paths()["data"]) / "share" / "noports" / "systemd",
        Path(__file__).resolve().parents[2] / "packaging" / "systemd",
    ):
        if d.is_dir():
            return d
    raise FileNotFoundError("systemd unit templates not found (share/noports/systemd)")


def _parser(program: str) -> argparse.ArgumentParser:
    mod, fn = PROGRAMS[program][2].split(":")
    factory = getattr(importlib.import_module(mod), fn)
    return factory(environ={}) if program == "srvd" else factory()


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(program: str, values: list[str]) -> str:
    """The TOML file for ``--set KEY=VALUE`` pairs, checked as the program will read it."""
    parser = _parser(program)
    table = option_table(parser)
    lines = [f"# {program} settings written by `noports service install` (long option names)"]
    for kv in values:
        key, sep, val = kv.partition("=")
        if not sep or not key:
            raise ValueError(f"--set wants KEY=VALUE, got {kv!r}")
        opt = table.get(key.replace("-", "_"))
        if opt is None or opt.dest == "config":
            raise ValueError(f"{program} has no option --{key}")
        if any(c in val for c in "\r\n\x00"):
            raise ValueError(f"--set {key}: the value must be one line")
        typ = opt.action.type
        if opt.kind == "bool":
            rendered = "true" if parse_bool(val, where=f"--set {key}") else "false"
        elif opt.kind == "list":
            items = [v.strip() for v in val.split(",") if v.strip()]
            rendered = "[" + ", ".join(_toml_string(v) for v in items) + "]"
        elif typ in (int, float) and re.fullmatch(r"-?[0-9.]+", val):
            rendered = val
        else:
            rendered = _toml_string(val)
        lines.append(f"{key} = {rendered}")
    text = "\n".join(lines) + "\n"
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as tmp:
        tmp.write(text)
        tmp.flush()
        try:
            load_toml(tmp.name, parser)
        except ConfigError as exc:
            raise ValueError(str(exc).replace(tmp.name, "--set")) from None
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unit_name, cfg_rel, _factory = PROGRAMS[args.program]
    if args.program == "sshnpd":
        if not args.instance or not _INSTANCE.fullmatch(args.instance):
            print(f"{PROG}: error: sshnpd needs --instance NAME ([A-Za-z0-9_.-])", file=sys.stderr)
            return 2
        unit_name = unit_name.replace("@.", f"@{args.instance}.")
    elif args.instance:
        print(f"{PROG}: error: --instance is for sshnpd only", file=sys.stderr)
        return 2
    if args.program == "server" and args.values:
        print(f"{PROG}: error: the server unit takes no config file (--set)", file=sys.stderr)
        return 2
    try:
        cfg = config_text(args.program, args.values) if cfg_rel else ""
    except (ValueError, ConfigError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    root = Path(args.root)
    bindir = Path(args.bin_dir or sysconfig.get_paths()["scripts"])
    template = (templates_dir() / PROGRAMS[args.program][0]).read_text()
    unit_text = template.replace(TEMPLATE_BIN, f"{bindir}/")
    unit_path = root / "etc/systemd/system" / PROGRAMS[args.program][0]
    cfg_path = root / "etc/noports" / cfg_rel.format(i=args.instance) if cfg_rel else None
    say = (lambda m: print(f"would {m}")) if args.dry_run else (lambda m: print(m))

    try:
        _ensure_user(root, args.dry_run, say)
        say(f"write {unit_path} (ExecStart in {bindir})")
        if not args.dry_run:
            unit_path.parent.mkdir(parents=True, exist_ok=True)
            _write(unit_path, unit_text, 0o644)
        if cfg_path is not None:
            if cfg_path.exists() and not args.force:
                say(f"keep {cfg_path} (exists; --force overwrites)")
            else:
                say(f"write {cfg_path}")
                if not args.dry_run:
                    cfg_path.parent.mkdir(parents=True, exist_ok=True)
                    _write(cfg_path, cfg, 0o640)
                    if root == Path("/") and os.geteuid() == 0:
                        shutil.chown(cfg_path, group=USER)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(f"next: systemctl daemon-reload && systemctl enable --now {unit_name}")
    return EXIT_OK


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _ensure_user(root: Path, dry_run: bool, say) -> None:  # type: ignore[no-untyped-def]
    cmd = [
        "useradd",
        "--system",
        "--home-dir",
        "/var/lib/noports",
        "--shell",
        "/usr/sbin/nologin",
        "--user-group",
        USER,
    ]
    if root != Path("/"):
        print(f"skip (--root is not /): {' '.join(cmd)}")
        return
    try:
        pwd.getpwnam(USER)
    except KeyError:
        say(f"run {' '.join(cmd)}")
        if not dry_run:
            subprocess.run(cmd, check=True)
        return
    say(f"keep user {USER} (exists)")


if __name__ == "__main__":
    sys.exit(main())
