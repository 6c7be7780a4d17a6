"""npt start-up does no needless work (issue 11, target 4): the modules the npt path imports
and the stand-ins that keep heavy modules out of it give the same results as the stdlib."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from noports import config
from noports.at.commands import random_uuid
from noports.cli.npt import build_parser
from noports.session import wire

#: stdlib modules the npt path used to import at start and does not need: TOML (config files
#: only), uuid and platform (a random id), datetime (a timestamp), shutil (bz2, lzma: a
#: terminal width)
NOT_AT_START = ("tomllib", "uuid", "platform", "datetime", "shutil", "bz2", "lzma")


#: the start path of each client: what ``main`` imports and parses before the session runs
NPT_START = (
    "import noports.cli.npt, noports.npt.run, noports.crypto.ephemeral, noports.cli.detach\n"
    "from noports.cli.npt import parse\n"
    "parse(['-f', '@a', '-t', '@b', '-r', '@c', '-d', 'dev', '-p', '22'])\n"
)
SSHNP_START = (
    "import noports.crypto.ephemeral, noports._compat, noports.log, noports.cli.detach\n"
    "import noports.sshnp.args, noports.sshnp.run\n"
    "from noports.cli.sshnp import parse\n"
    "parse(['-f', '@a', '-t', '@b', '-r', '@c', '-d', 'dev'])\n"
)
#: modules each client's start path does not need: the other tunnel mode, the daemon, relay
#: and server sides, and the thread pool the RSA session key falls back to (made on first use)
_NOT_FOR_CLIENTS = (
    "noports.sshnpd",
    "noports.srvd",
    "noports.atserver",
    "concurrent.futures.thread",
)
NOT_FOR_NPT = ("noports.tunnel.single", *_NOT_FOR_CLIENTS)
NOT_FOR_SSHNP = ("noports.tunnel.multi", *_NOT_FOR_CLIENTS)

_REPORT = (
    "import sys, json\n"
    "classes = [f'{n}.{k}' for n, m in list(sys.modules.items()) if n.startswith('noports')\n"
    "           for k, v in vars(m).items() if isinstance(v, type) and v.__module__ == n\n"
    "           and '__dataclass_fields__' in vars(v)]\n"
    "stream = sys.modules.get('noports.crypto.stream')\n"
    "print(json.dumps({'modules': sorted(sys.modules), 'dataclasses': sorted(classes),\n"
    "                  'ctr_probed': stream is not None and 'CTR_INTO' in vars(stream)}))\n"
)


def _start_path(code: str, home: Path) -> dict:
    """What a fresh interpreter has loaded after ``code`` (``-S``: no editable finder), in an
    empty HOME (no config file of the user's changes what is imported)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOPORTS_")}
    env["HOME"] = str(home)
    out = subprocess.run(
        [sys.executable, "-S", "-c", code + _REPORT],
        env={**env, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=home,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_npt_path_imports_none_of_the_modules_it_does_not_need(tmp_path: Path) -> None:
    got = _start_path(NPT_START, tmp_path)
    assert [m for m in NOT_AT_START if m in got["modules"]] == []


@pytest.mark.parametrize(
    ("code", "not_needed", "needed"),
    [
        (NPT_START, NOT_FOR_NPT, "noports.tunnel.multi"),
        (SSHNP_START, NOT_FOR_SSHNP, "noports.tunnel.single"),
    ],
    ids=["npt", "sshnp"],
)
def test_client_start_path_makes_no_dataclass_and_loads_one_tunnel_mode(
    code: str, not_needed: tuple[str, ...], needed: str, tmp_path: Path
) -> None:
    """Issue 11 target 4: making a dataclass costs ~1 ms (one ``exec`` per method); the
    start path's value classes are :mod:`noports.record` classes, the ``tunnel`` package
    loads only the mode in use, and the CTR capability probe waits for a CTR session."""
    got = _start_path(code, tmp_path)
    assert got["dataclasses"] == [], "dataclasses on the start path"
    loaded = [m for m in got["modules"] if m.startswith(not_needed)]
    assert loaded == [], f"imported at start: {loaded}"
    assert needed in got["modules"]  # the check above is not vacuous
    assert "noports.session.handshake" in got["modules"]
    assert got["ctr_probed"] is False


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
