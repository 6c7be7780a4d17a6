"""Secret files (reliability T6): 0600 from creation, 0700 directories, no symlinks, atomic."""

from __future__ import annotations

import os
import stat

import pytest

from noports.errors import InsecureFileError, KeyFileError
from noports.fsutil import read_secret, secure_dir, write_secret


def mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture
def umask000():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_write_under_umask_000_is_0600_in_0700_dirs(tmp_path, umask000):
    target = tmp_path / "a" / "b" / "c" / "secret"
    write_secret(target, b"k")
    assert mode(target) == 0o600
    for d in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert mode(d) == 0o700, d
    assert target.read_bytes() == b"k"


def test_overwrite_replaces_atomically_and_leaves_no_temp(tmp_path):
    target = tmp_path / "s"
    write_secret(target, b"old")
    write_secret(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_no_clobber_refuses_existing_file(tmp_path):
    target = tmp_path / "s"
    write_secret(target, b"first")
    with pytest.raises(KeyFileError):
        write_secret(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first"
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_symlinked_target_is_refused_and_untouched(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "keys"
    link.symlink_to(victim)
    with pytest.raises(InsecureFileError):
        write_secret(link, b"evil")
    assert victim.read_bytes() == b"precious"


def test_symlinked_directory_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "dir").symlink_to(real)
    with pytest.raises(InsecureFileError):
        secure_dir(tmp_path / "dir")


def test_read_refuses_open_modes_and_symlinks(tmp_path):
    p = tmp_path / "s"
    write_secret(p, b"x")
    assert read_secret(p) == b"x"
    os.chmod(p, 0o644)
    with pytest.raises(InsecureFileError, match="0644"):
        read_secret(p)
    assert read_secret(p, strict_mode=False) == b"x"
    link = tmp_path / "l"
    link.symlink_to(p)
    with pytest.raises(InsecureFileError):
        read_secret(link, strict_mode=False)
    with pytest.raises(KeyFileError):
        read_secret(tmp_path / "missing")


def test_existing_directories_keep_their_mode(tmp_path):
    """Writing a secret into an existing shared directory never changes that directory
    (before: a root process writing into /tmp made /tmp 0700)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o755)  # like a home directory or /etc
    for d, want in ((shared, 0o1777), (home, 0o755)):
        write_secret(d / "k.atKeys", b"secret")
        assert stat.S_IMODE(d.stat().st_mode) == want
        assert stat.S_IMODE((d / "k.atKeys").stat().st_mode) == 0o600


def test_directory_writable_by_others_is_refused(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)  # no sticky bit: anyone could replace the file
    with pytest.raises(InsecureFileError, match="writable by others"):
        write_secret(open_dir / "k.atKeys", b"secret")
    assert not (open_dir / "k.atKeys").exists()
