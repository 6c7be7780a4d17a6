"""npt start-up does no needless work (issue 11, target 4): the modules the npt path imports
and the stand-ins that keep heavy modules out of it give the same results as the stdlib."""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import uuid

from noports import config
from noports.at.commands import random_uuid
from noports.cli.npt import build_parser
from noports.session import wire

#: stdlib modules the npt path used to import at start and does not need: TOML (config files
#: only), uuid and platform (a random id), datetime (a timestamp), shutil (bz2, lzma: a
#: terminal width)
NOT_AT_START = ("tomllib", "uuid", "platform", "datetime", "shutil", "bz2", "lzma")


def test_npt_path_imports_none_of_the_modules_it_does_not_need() -> None:
    code = (
        "import sys\n"
        "import noports.cli.npt, noports.npt.run, noports.crypto.ephemeral\n"
        "from noports.cli.npt import parse\n"
        "parse(['-f', '@a', '-t', '@b', '-r', '@c', '-d', 'dev', '-p', '22'])\n"
        f"print(' '.join(m for m in {NOT_AT_START!r} if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOPORTS_")}
    env["HOME"] = os.environ.get("HOME", "/nonexistent")
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={**env, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"imported at start: {out.stdout.strip()}"


def test_random_uuid_is_a_version_4_uuid() -> None:
    seen = set()
    for _ in range(200):
        s = random_uuid()
        u = uuid.UUID(s)
        assert str(u) == s and u.version == 4 and u.variant == uuid.RFC_4122
        seen.add(s)
    assert len(seen) == 200
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", s)


def test_client_nonce_is_dart_local_iso8601_with_microseconds() -> None:
    before = datetime.datetime.now()
    text = wire.client_nonce()
    after = datetime.datetime.now()
    got = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f")
    assert before - datetime.timedelta(microseconds=1) <= got <= after
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}", text)
    fixed = datetime.datetime(2026, 1, 2, 3, 4, 5, 60)
    assert wire.client_nonce(fixed) == "2026-01-02T03:04:05.000060"


def test_raw_formatter_wraps_help_like_argparse(monkeypatch) -> None:
    for cols in ("60", "132"):
        monkeypatch.setenv("COLUMNS", cols)
        ours = build_parser()
        stock = build_parser()
        stock.formatter_class = argparse.RawDescriptionHelpFormatter
        assert ours.formatter_class is config.RawFormatter
        assert ours.format_help() == stock.format_help()
