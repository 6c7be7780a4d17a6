"""Ephemeral ssh key pairs for the v4 / legacy session form (spec 3.2, 9.3).

When a client asks for neither relay encryption nor the strong mode, it reaches sshd with a
throw-away key the daemon makes: ``ssh-keygen`` writes the pair into a fresh 0700 directory
under ``~/.sshnp/`` (created 0700), the daemon reads both halves, deletes the files at once,
authorises the public half in ``authorized_keys`` with the official restricted options
(``command="echo \\"ssh session complete\\";sleep 20",PermitOpen="localhost:<port>"`` plus
``--ephemeral-permissions``), tagged ``sshnp_ephemeral_<sid>``, and returns the private half
to the client in ``ephemeralPrivateKey``. The line is removed after :data:`REMOVE_AFTER`
seconds, and every line still pending is removed when the daemon stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..crypto.sshkey import parse_public_key
from ..errors import LocalError
from ..fsutil import secure_dir
from .authkeys import AuthorizedKeys, ephemeral_options

log = logging.getLogger("noports.sshnpd.ephemeral")

REMOVE_AFTER = 15.0
KEYGEN_TIMEOUT = 30.0
ALGORITHMS = {"ssh-ed25519": ["-t", "ed25519", "-a", "100"], "ssh-rsa": ["-t", "rsa", "-b", "4096"]}


async def generate_keypair(algorithm: str, work_root: Path) -> tuple[str, str]:
    """``(private_pem, public_line)`` from ``ssh-keygen``; no file survives the call."""
    if algorithm not in ALGORITHMS:
        raise LocalError(f"unsupported --ssh-algorithm {algorithm!r}")
    secure_dir(work_root)
    tmp = Path(tempfile.mkdtemp(prefix="keygen_", dir=work_root))  # 0700 by mkdtemp
    try:
        ident = tmp / "ephemeral"
        proc = await asyncio.create_subprocess_exec(
            "ssh-keygen",
            *ALGORITHMS[algorithm],
            "-f",
            str(ident),
            "-q",
            "-N",
            "",
            "-C",
            "",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), KEYGEN_TIMEOUT)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise LocalError(f"ssh-keygen failed: {err.decode('utf-8', 'replace').strip()[:200]}")
        private = ident.read_text(encoding="ascii")
        public = (tmp / "ephemeral.pub").read_text(encoding="ascii").strip()
        return private, public
    except FileNotFoundError as exc:
        raise LocalError(f"ssh-keygen is not available: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class EphemeralKeys:
    """Authorise ephemeral keys and take them away again (after a delay, or at exit)."""

    def __init__(
        self,
        authorized_keys: AuthorizedKeys,
        *,
        sshd_port: int,
        extra_permissions: str = "",
        algorithm: str = "ssh-ed25519",
        work_root: Path | None = None,
        remove_after: float = REMOVE_AFTER,
    ) -> None:
        self.authorized_keys = authorized_keys
        self.options = ephemeral_options(sshd_port, extra_permissions)
        self.algorithm = algorithm
        self.work_root = work_root or Path(os.path.expanduser("~")) / ".sshnp"
        self.remove_after = remove_after
        self._pending: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def issue(self, session_id: str) -> str:
        """Generate, authorise and schedule removal; returns the private key (PEM text)."""
        private, public = await generate_keypair(self.algorithm, self.work_root)
        key = parse_public_key(public, allow_comment=False)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            None, self.authorized_keys.add_ephemeral, key, session_id, self.options
        )
        self._pending[session_id] = loop.call_later(
            self.remove_after, self._start_removal, session_id
        )
        log.info(
            "ephemeral key for session %s authorised for %.0f s", session_id, self.remove_after
        )
        return private

    def _start_removal(self, session_id: str) -> None:
        self._pending.pop(session_id, None)
        task = asyncio.get_running_loop().create_task(self.remove(session_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def remove(self, session_id: str) -> None:
        handle = self._pending.pop(session_id, None)
        if handle is not None:
            handle.cancel()
        try:
            n = await asyncio.get_running_loop().run_in_executor(
                None, self.authorized_keys.remove_session, session_id
            )
        except (OSError, LocalError) as exc:
            log.error("could not remove the ephemeral key of session %s: %s", session_id, exc)
            return
        log.info("removed %d ephemeral authorized_keys line(s) of session %s", n, session_id)

    @property
    def pending(self) -> list[str]:
        return list(self._pending)

    def remove_all_now(self) -> None:
        """Synchronous clean-up for shutdown: remove every line still pending."""
        for sid, handle in list(self._pending.items()):
            handle.cancel()
            try:
                self.authorized_keys.remove_session(sid)
            except (OSError, LocalError) as exc:
                log.error("could not remove the ephemeral key of session %s: %s", sid, exc)
        self._pending.clear()
