"""``noports demo``: the README's main job runs end to end, checks its data and leaves
nothing running."""

from __future__ import annotations

import argparse

import pytest

from noports.cli import demo
from noports.cli.noports import main as umbrella


@pytest.mark.parametrize("mode", ["aead", "twin", "legacy"])
def test_demo_modes(mode: str, impl: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = demo.main(["--mode", mode, "--size", "8M", "--pings", "50", "--impl", impl])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "sha256 OK" in out.out
    assert ("compiled" if impl == "c" else "pure Python") in out.out
    assert {"aead": "AEAD records", "twin": "twin keys", "legacy": "legacy"}[mode] in out.out
    assert "stray" not in out.err


def test_demo_via_umbrella_default_is_strong_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert umbrella(["demo", "--size", "4M", "--pings", "20", "--loop", "asyncio"]) == 0
    out = capsys.readouterr().out
    assert "AEAD records" in out and "event loop asyncio" in out and "MB/s" in out


def test_size_parser() -> None:
    assert demo.parse_size("64M") == 64 << 20
    assert demo.parse_size("1GiB") == 1 << 30
    assert demo.parse_size("1000") == 1000
    with pytest.raises(argparse.ArgumentTypeError):
        demo.parse_size("lots")
