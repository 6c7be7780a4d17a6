"""A real OpenSSH ``sshd`` on a loopback port, for tests and benchmarks.

It runs in the foreground (``-D -e``) with its own config, host key and authorized_keys in
a private directory, accepts only the client key made here, and is stopped (and waited for)
on ``close()``. Unavailable sshd -> ``SshdUnavailable`` so callers can skip with a reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from noports.quickstart.rig import find_sshd, free_port, keygen, sshd_config


class SshdUnavailable(RuntimeError):
    pass


def _keygen(path: Path) -> None:
    keygen(path, comment="noports-test")


class Sshd:
    """``with Sshd() as s: s.ssh_args() ...`` -- sshd on 127.0.0.1:<s.port>."""

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        authorized_keys_file: str | os.PathLike[str] | None = None,
    ) -> None:
        exe = find_sshd()
        if exe is None:
            raise SshdUnavailable("OpenSSH sshd is not installed (apt-get install openssh-server)")
        if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
            raise SshdUnavailable("OpenSSH client tools (ssh, ssh-keygen) are not installed")
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="noports-sshd-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.exe = exe
        self.port = port or free_port()
        self.host_key = self.dir / "host_ed25519"
        self.client_key = self.dir / "client_ed25519"
        # sshd reads this file; the client key made here is appended to it at start. Pass a
        # HOME's ~/.ssh/authorized_keys to have sshd honour what sshnpd writes there.
        self.authorized_keys = (
            Path(authorized_keys_file) if authorized_keys_file else self.dir / "authorized_keys"
        )
        self.known_hosts = self.dir / "known_hosts"
        self.config = self.dir / "sshd_config"
        self.user = os.environ.get("USER") or _whoami()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Sshd:
        _keygen(self.host_key)
        _keygen(self.client_key)
        self.authorized_keys.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        existing = self.authorized_keys.read_text() if self.authorized_keys.exists() else ""
        if existing and not existing.endswith("\n"):
            existing += "\n"
        self.authorized_keys.write_text(existing + Path(f"{self.client_key}.pub").read_text())
        os.chmod(self.authorized_keys, 0o600)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege-separation dir
        self.config.write_text(
            sshd_config(
                self.port,
                self.host_key,
                self.authorized_keys,
                self.dir / "sshd.pid",
                extra=("MaxStartups 100:30:200", "Subsystem sftp internal-sftp"),
            )
        )
        self.proc = subprocess.Popen(
            [self.exe, "-D", "-e", "-f", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "sshd.log", "wb"),  # noqa: SIM115 - lives as long as sshd
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.dir / "sshd.log").read_text(errors="replace")
                raise SshdUnavailable(f"sshd exited at start: {log.strip()[-400:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.close()
        raise SshdUnavailable("sshd did not start listening in time")

    def ssh_base(self) -> list[str]:
        """ssh options that trust this server and use this key, and nothing from ~/.ssh."""
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "LogLevel=ERROR",
        ]

    def ssh_args(self, *cmd: str, port: int | None = None) -> list[str]:
        return [*self.ssh_base(), "-p", str(port or self.port), f"{self.user}@127.0.0.1", *cmd]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Sshd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _whoami() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
