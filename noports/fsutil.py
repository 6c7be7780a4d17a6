"""Secret files: created 0600 inside 0700 directories, never through a symlink.

``write_secret`` creates a temporary file with O_CREAT|O_EXCL|O_NOFOLLOW and mode 0600 (so
the mode is right from the first byte, whatever the umask), fsyncs it, and renames it over
the target. A crash leaves the old file or the new one, never a torn or empty one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import InsecureFileError, KeyFileError


def secure_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) with mode 0700 if missing; refuse a symlinked leaf."""
    p = Path(path)
    if p.is_symlink():
        raise InsecureFileError(f"{p} is a symlink; refusing to use it for secrets")
    if not p.exists():
        # Every missing ancestor is created 0700 by us, never with the umask's mode: under
        # umask 000, mkdir(parents=True) would leave ~/.atsign 0777 and let another user
        # rename the keys directory away.
        missing = []
        q = p
        while not q.exists() and q != q.parent:
            missing.append(q)
            q = q.parent
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
            else:
                os.chmod(d, 0o700)  # mkdir's mode is masked by the umask; make it exact
    if not p.is_dir():
        raise KeyFileError(f"{p} is not a directory")
    # An existing directory keeps its mode: it may be shared (/tmp, a home directory, /etc),
    # and changing it would break other programs (root writing a secret into /tmp must never
    # make /tmp 0700). The secret files themselves are 0600 from creation. A directory that
    # others may write to without the sticky bit is refused: they could swap the file.
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o022 and not mode & stat.S_ISVTX:
        raise InsecureFileError(
            f"{p} is writable by others (mode {mode:04o}); refusing to keep secrets in it"
            f" (chmod go-w {p})"
        )
    return p


def write_secret(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> Path:
    """Atomically write ``data`` to ``path`` with mode 0600 from creation."""
    p = Path(path)
    secure_dir(p.parent)
    if p.is_symlink():
        raise InsecureFileError(f"{p} is a symlink; refusing to write a secret through it")
    if not overwrite and p.exists():
        raise KeyFileError(f"{p} already exists")
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    flags = (
        os.O_WRONLY
        | os.O_CREAT
        | os.O_EXCL
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_CLOEXEC", 0)
    )
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileExistsError:
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # umask cannot widen it, but make it exact
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    if overwrite:
        os.replace(tmp, p)
    else:
        # No-clobber atomically: link() fails if the name appeared since the check above.
        try:
            os.link(tmp, p)
        except FileExistsError as exc:
            raise KeyFileError(f"{p} already exists") from exc
        finally:
            os.unlink(tmp)
    try:
        dfd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return p


def read_secret(path: str | os.PathLike[str], *, strict_mode: bool = True) -> bytes:
    """Read a secret file, refusing symlinks and (like ssh) group/world-readable files."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise KeyFileError(f"{p} does not exist") from exc
    except OSError as exc:
        if p.is_symlink():
            raise InsecureFileError(
                f"{p} is a symlink; refusing to read a secret through it"
            ) from exc
        raise KeyFileError(f"cannot read {p}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if strict_mode and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
            raise InsecureFileError(
                f"{p} has mode {stat.S_IMODE(st.st_mode):04o}; secrets must be 0600 (chmod 600 {p})"
            )
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        os.close(fd)
