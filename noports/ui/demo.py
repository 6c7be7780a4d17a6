"""The one-click local demo of the onboarding screen: NoPorts without any account.

It runs the pieces of ``noports quickstart`` (:mod:`noports.quickstart`) as children of this
process, in a private temporary directory: the embedded server (root directory + atServer on
loopback), three demo atSigns activated through the real onboarding path (``@qs_client``,
``@qs_device``, ``@qs_relay``), a small web page on loopback, ``srvd`` and ``sshnpd``. The
client atSign then appears in the app's switcher (its keys stay in the demo directory, never
in ``~/.atsign``), with one demo profile for the web page; pressing Connect opens a real
tunnel through the local relay. Everything is local-only demo data and goes away when the
demo is stopped or the app exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from ..quickstart import ATSIGNS, DEVICE, PAGE, Quickstart

log = logging.getLogger("noports.ui")
DEMO_NAME = "Demo web page (local demo data)"
PAGE_BYTES = PAGE


@dataclass
class DemoInfo:
    """Where the demo atSigns live: what :class:`~noports.ui.app.UiState` needs."""

    client: str
    device: str
    relay: str
    device_name: str
    keys_file: Path
    root: str
    ca_file: str
    web_port: int


class Demo:
    """One demo at a time; ``state`` is off, starting, running or failed."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.state = "off"
        self.error = ""
        self.lines: list[str] = []
        self.info: DemoInfo | None = None
        self._qs: Quickstart | None = None

    def _say(self, line: str) -> None:
        self.lines.append(line)
        log.info("demo: %s", line)

    def _start_blocking(self) -> DemoInfo:
        qs = Quickstart(None, ssh="no", timeout=self.timeout, say=self._say)
        self._qs = qs
        qs.start_server()
        qs.activate()
        qs.start_services()
        qs.start_noports()
        assert qs.http is not None
        c = ATSIGNS["client"]
        return DemoInfo(
            client=c, device=ATSIGNS["device"], relay=ATSIGNS["relay"], device_name=DEVICE,
            keys_file=qs.layout.keys(c), root=qs.root, ca_file=qs.ca_file,
            web_port=qs.http.port,
        )  # fmt: skip

    async def start(self) -> DemoInfo:
        """Start everything (the blocking child start-ups run in a worker thread)."""
        if self.state in ("starting", "running") and self.info is not None:
            return self.info
        self.state, self.error, self.lines = "starting", "", []
        work = asyncio.ensure_future(asyncio.to_thread(self._start_blocking))
        try:
            self.info = await asyncio.shield(work)
        except BaseException as exc:
            # a cancelled start lets its thread finish (each step is bounded by the
            # timeout), so no child is spawned after everything has been closed
            with contextlib.suppress(BaseException):
                await work
            cancelled = isinstance(exc, asyncio.CancelledError)
            self.state = "off" if cancelled else "failed"
            self.error = "" if cancelled else (str(exc).splitlines() or [type(exc).__name__])[0]
            await asyncio.to_thread(self._close_blocking)
            raise
        self.state = "running"
        return self.info

    def _close_blocking(self) -> None:
        qs, self._qs = self._qs, None
        if qs is not None:
            with contextlib.suppress(Exception):
                qs.close()

    async def stop(self) -> None:
        self.info = None
        if self.state != "failed":
            self.state = "off"
        await asyncio.to_thread(self._close_blocking)
