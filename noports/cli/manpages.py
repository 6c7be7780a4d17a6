"""Man pages for every program, generated from the argparse parsers with argparse-manpage.

    python -m noports.cli.manpages packaging/man          # (re)write the pages
    python -m noports.cli.manpages --check packaging/man  # exit 1 if any page is stale

The pages are committed under packaging/man/ and installed into share/man/man1 by the wheel
and the sdist (building them needs no runtime dependency in the build environment).
``SOURCE_DATE_EPOCH`` sets the date in the header; ``--check`` ignores that line.
argparse-manpage is a development dependency (the ``test`` extra), not a runtime one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from .. import __version__

# page name -> (module, parser factory name); the factories build the parsers main() uses.
PAGES: dict[str, tuple[str, str]] = {
    "srvd": ("noports.cli.srvd", "build_parser"),
    "srv": ("noports.cli.srv", "build_parser"),
    "sshnpd": ("noports.cli.sshnpd", "build_parser"),
    "sshnp": ("noports.cli.sshnp", "build_parser"),
    "sshnp-ssh-config": ("noports.cli.sshconfig", "build_parser"),
    "npt": ("noports.cli.npt", "build_parser"),
    "npa": ("noports.cli.npa", "build_parser"),
    "at_activate": ("noports.cli.at_activate", "build_parser"),
    "noports-demo": ("noports.cli.demo", "build_parser"),
    "noports-quickstart": ("noports.cli.quickstart", "build_parser"),
    "noports-server": ("noports.cli.server", "_run_parser"),
    "noports-service": ("noports.cli.service", "build_parser"),
    "noports-ui": ("noports.cli.ui", "build_parser"),
    "noports-doctor": ("noports.cli.doctor", "build_parser"),
    "noports-profile": ("noports.cli.profile", "build_parser"),
    "noports-agent": ("noports.cli.agent", "build_parser"),
}


def _umbrella() -> argparse.ArgumentParser:
    from .noports import SUBCOMMANDS

    p = argparse.ArgumentParser(
        prog="noports",
        description="NoPorts in Python. Each subcommand has its own page: "
        + ", ".join(f"noports-{n}(1)" for n in sorted(SUBCOMMANDS))
        + "; the other programs are srvd(1), srv(1), sshnpd(1), sshnp(1), npt(1), npa(1) "
        "and at_activate(1).",
    )
    p.add_argument(
        "--version",
        action="store_true",
        help="show version, implementation, event loop and OpenSSL",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_mod, text) in sorted(SUBCOMMANDS.items()):
        sub.add_parser(name, help=text, description=text)
    return p


@contextlib.contextmanager
def _neutral_environment() -> Iterator[None]:
    """Defaults must not show the generating user's home or NOPORTS_* settings."""
    saved = dict(os.environ)
    try:
        for k in list(os.environ):
            if k.startswith("NOPORTS_"):
                del os.environ[k]
        os.environ["HOME"] = "~"
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def parsers() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    out: dict[str, Callable[[], argparse.ArgumentParser]] = {"noports": _umbrella}
    for page, (mod, fn) in PAGES.items():
        out[page] = getattr(importlib.import_module(mod), fn)
    return out


def render(page: str, factory: Callable[[], argparse.ArgumentParser]) -> str:
    from argparse_manpage.manpage import Manpage  # type: ignore[import-untyped]

    with _neutral_environment():
        parser = factory()
    parser.prog = page.replace("-", " ", 1) if page.startswith("noports-") else parser.prog
    summary = " ".join((parser.description or "").split("\n\n")[0].replace("``", "").split())
    summary = summary.split(". ")[0].rstrip(".")
    if summary.startswith(parser.prog + ":"):
        summary = summary[len(parser.prog) + 1 :].strip()
    data = {
        "description": summary,
        "project_name": "noports",
        "version": __version__,
        "manual_title": "NoPorts manual",
        "manual_section": 1,
    }
    text = str(Manpage(parser, _data=data))
    # the title is the page name ("noports quickstart" would be two .TH arguments)
    title = page.upper().replace("-", "\\-")
    text = re.sub(r'^\.TH .*? "1"', lambda _m: f'.TH {title} "1"', text, count=1)
    return text if text.endswith("\n") else text + "\n"


def _body(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if not ln.startswith(".TH ")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noports.cli.manpages", description=__doc__)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    a = ap.parse_args(argv)
    try:
        import argparse_manpage  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        print("manpages: error: argparse-manpage is not installed", file=sys.stderr)
        return 2
    stale = []
    a.outdir.mkdir(parents=True, exist_ok=True)
    for page, factory in parsers().items():
        path = a.outdir / f"{page}.1"
        text = render(page, factory)
        if a.check:
            if not path.exists() or _body(path.read_text()) != _body(text):
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"manpages: stale: {', '.join(stale)} (rerun without --check)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
