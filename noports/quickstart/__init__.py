"""``noports quickstart``: the whole NoPorts system on one machine, checked, in one command.

What it does, in order (every program is a real subprocess of this one):

1. the embedded control plane (``noports server``) in ``<data-dir>/server``;
2. three atSigns, ``@qs_client``, ``@qs_device`` and ``@qs_relay``, through the real
   onboarding path: ``noports server add`` prints an activation secret (read from its stdout
   pipe, never put in argv or a log), and :func:`noports.at.onboard.onboard` activates with
   it and writes ``<data-dir>/home/.atsign/keys/<atSign>_key.atKeys``. A re-run on the same
   ``--data-dir`` reuses atSigns whose keys are there;
3. a small HTTP service on loopback (in this process), and, when OpenSSH's ``sshd`` is
   installed, a private sshd on a loopback port with its own host key, accepting one user
   key made here (``<data-dir>/home/.ssh/id_ed25519``);
4. ``srvd`` (relay) and ``sshnpd`` (device daemon, ``--permit-open`` only the two services);
5. checks: ``npt`` to the HTTP service and a page fetched through it (bytes compared), and an
   ``sshnp`` session that runs ``echo ... TEST PASSED`` on the sshd;
6. prints the exports and the ``npt`` / ``sshnp`` command lines to type next, and keeps
   everything running until Ctrl-C or SIGTERM (``--exit``: stop right after the checks).

Children get ``HOME=<data-dir>/home`` (nothing touches the user's ``~/.atsign`` or
``~/.ssh``), ``NOPORTS_ROOT``/``NOPORTS_CA_FILE`` for the embedded server, and a marker
variable ``NOPORTS_QUICKSTART_ID``. Each runs in its own process group, which is signalled
(SIGTERM, then SIGKILL) on the way out, so grandchildren (ssh, sshd sessions) go too; on
Linux each child also gets SIGTERM if quickstart itself dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import _compat
from ..errors import EXIT_NOT_FOUND, ConfigError
from .rig import (
    Child,
    HttpService,
    QuickstartError,
    SshdSetup,
    Supervisor,
    find_sshd,
    free_port,
)

MARK_ENV = "NOPORTS_QUICKSTART_ID"
DEVICE = "quickstart"
ATSIGNS = {"client": "@qs_client", "device": "@qs_device", "relay": "@qs_relay"}
READY = {
    "srvd": r"ready: monitor started",
    "sshnpd": r"Monitor .*monitor started",
    "npt": r"npt is listening on [\d.]+:(\d+)",
}
PAGE = b"<!doctype html><title>NoPorts quickstart</title><p>Hello through a NoPorts tunnel.</p>\n"
KEEP_ENV = (
    "PATH",
    "LANG",
    "LC_ALL",
    "USER",
    "LOGNAME",
    "TMPDIR",
    "NOPORTS_LOOP",
    "NOPORTS_NO_EXTENSIONS",
    "PYTHONPATH",
)


class ToolMissingError(QuickstartError):
    exit_code = EXIT_NOT_FOUND


class Interrupted(Exception):
    """SIGINT / SIGTERM arrived."""


def python_argv(module: str, *args: str) -> list[str]:
    return _compat.python_module_argv(module, *args)


def package_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


@dataclass
class Layout:
    data: Path
    home: Path = field(init=False)
    server: Path = field(init=False)
    logs: Path = field(init=False)

    def __post_init__(self) -> None:
        self.home = self.data / "home"
        self.server = self.data / "server"
        self.logs = self.data / "logs"
        for d in (self.data, self.home, self.logs):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)

    def keys(self, atsign: str) -> Path:
        return self.home / ".atsign" / "keys" / f"{atsign}_key.atKeys"


def child_env(layout: Layout, marker: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/bin:/bin")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root(), env.get("PYTHONPATH", "")) if p)
    env["HOME"] = str(layout.home)
    env["PYTHONUNBUFFERED"] = "1"
    env[MARK_ENV] = marker
    return env


class Quickstart:
    """One run. ``say`` prints a progress line (stdout)."""

    def __init__(
        self,
        data_dir: Path | None,
        *,
        ssh: str = "auto",
        timeout: float = 60.0,
        say: Callable[[str], None] = print,
    ) -> None:
        self.own_dir = data_dir is None
        self.layout = Layout(
            Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="noports-quickstart-"))
        )
        self.ssh = ssh
        self.timeout = timeout
        self.say = say
        self.marker = os.environ.get(MARK_ENV) or uuid.uuid4().hex
        self.env = child_env(self.layout, self.marker)
        self.sup = Supervisor(self.env, self.layout.logs)
        self.http: HttpService | None = None
        self.sshd: SshdSetup | None = None
        self.root = ""
        self.ca_file = ""
        self.npt_port = 0
        self.checks: list[str] = []

    # -- steps ----------------------------------------------------------------------------

    def start_server(self) -> None:
        _, _m = self.sup.spawn(
            "server",
            python_argv(
                "noports.cli.noports",
                "server",
                "--data-dir",
                str(self.layout.server),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--output",
                "json",
            ),
            ready=r"^\{.*\"root\"",
            which="out",
            timeout=self.timeout,
        )
        assert _m is not None
        info = json.loads(_m.string)
        self.root, self.ca_file = str(info["root"]), str(info["ca_file"])
        self.env["NOPORTS_ROOT"], self.env["NOPORTS_CA_FILE"] = self.root, self.ca_file
        self.say(f"[ok] embedded server (root directory + atServer) on {self.root}")

    def _server_admin(self, *args: str) -> Child:
        child = self.sup.run(
            "server-admin",
            python_argv(
                "noports.cli.noports",
                "server",
                args[0],
                "--data-dir",
                str(self.layout.server),
                *args[1:],
            ),
            timeout=self.timeout,
            secret_stdout=args[0] == "add",  # the activation secret: memory only
        )
        if child.popen.returncode != 0:
            raise QuickstartError(f"noports server {args[0]} failed: {child.text('err')[-300:]}")
        return child

    def activate(self) -> None:
        from ..at.onboard import onboard

        registered = set(json.loads(self._server_admin("list", "--output", "json").text("out")))
        for atsign in ATSIGNS.values():
            path = self.layout.keys(atsign)
            if atsign in registered and path.exists():
                self.say(f"[ok] {atsign}: reusing the keys in {path}")
                continue
            if atsign in registered:
                self._server_admin("remove", atsign)
            if path.exists():
                path.unlink()  # keys for an atSign this server no longer knows
            out = self._server_admin("add", atsign).text("out").strip().splitlines()
            secret = out[-1].strip() if out else ""
            done = _compat.run(
                onboard(
                    atsign,
                    secret,
                    root=self.root,
                    ca_file=self.ca_file,
                    device_name=DEVICE,
                    keys_path=path,
                )
            )
            del secret
            self.say(f"[ok] {atsign}: activated with a one-time secret; keys in {done.path}")

    def start_services(self) -> None:
        self.http = HttpService(PAGE)
        self.say(f"[ok] local web service on 127.0.0.1:{self.http.port}")
        if self.ssh == "no":
            return
        exe = find_sshd()
        if exe is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
            if self.ssh == "yes":
                raise ToolMissingError("--ssh: OpenSSH (sshd, ssh, ssh-keygen) is not installed")
            self.say("[skip] OpenSSH sshd/ssh not installed: no sshnp check")
            return
        ssh_dir = self.layout.home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        self.sshd = SshdSetup(
            exe,
            self.layout.data / "sshd",
            free_port(),
            ssh_dir / "id_ed25519",
            ssh_dir / "known_hosts_quickstart",
            _whoami(),
        )
        self.sshd.start(self.sup, ssh_dir / "authorized_keys")
        self.say(f"[ok] private sshd on 127.0.0.1:{self.sshd.port} (its own host key)")

    def _require(self, prog: str) -> None:
        import importlib.util

        if importlib.util.find_spec(f"noports.cli.{prog}") is None:
            raise ToolMissingError(f"{prog} is not part of this installation of noports")

    def start_noports(self) -> None:
        c, d, r = ATSIGNS["client"], ATSIGNS["device"], ATSIGNS["relay"]
        self._require("srvd")
        self.sup.spawn(
            "srvd",
            python_argv(
                "noports.cli.srvd",
                "-a",
                r,
                "-i",
                "127.0.0.1",
                "--bind",
                "127.0.0.1",
                "-m",
                c,
                "--drain-seconds",
                "2",
            ),
            ready=READY["srvd"],
            timeout=self.timeout,
        )
        self.say(f"[ok] srvd (relay) {r} on 127.0.0.1")
        self._require("sshnpd")
        assert self.http is not None
        permits = [f"localhost:{self.http.port}"]
        extra: list[str] = []
        if self.sshd is not None:
            permits.append(f"localhost:{self.sshd.port}")
            extra = ["--local-sshd-port", str(self.sshd.port)]
        self.sup.spawn(
            "sshnpd",
            python_argv(
                "noports.cli.sshnpd",
                "-a",
                d,
                "-m",
                c,
                "-d",
                DEVICE,
                "--permit-open",
                ",".join(permits),
                *extra,
            ),
            ready=READY["sshnpd"],
            timeout=self.timeout,
        )
        self.say(
            f"[ok] sshnpd (device daemon) {d} device {DEVICE!r}, permit-open {','.join(permits)}"
        )

    def npt_args(self) -> list[str]:
        assert self.http is not None
        return [
            "-f",
            ATSIGNS["client"],
            "-t",
            ATSIGNS["device"],
            "-r",
            ATSIGNS["relay"],
            "-d",
            DEVICE,
            "-p",
            str(self.http.port),
        ]

    def check_npt(self, keep: bool) -> None:
        self._require("npt")
        t0 = time.monotonic()
        child, m = self.sup.spawn(
            "npt",
            python_argv("noports.cli.npt", *self.npt_args(), *(["-K"] if keep else [])),
            ready=READY["npt"],
            timeout=self.timeout,
        )
        assert m is not None
        self.npt_port = int(m.group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{self.npt_port}/", timeout=15) as resp:
            status, body = resp.status, resp.read()
        if status != 200 or body != PAGE:
            raise QuickstartError(f"npt check: HTTP {status}, {len(body)} bytes, not the page")
        ms = (time.monotonic() - t0) * 1000
        self.checks.append("npt")
        self.say(
            f"[ok] npt check: HTTP {status}, {len(body)} bytes fetched through the tunnel "
            f"on 127.0.0.1:{self.npt_port} ({ms:.0f} ms including session set-up)"
        )
        if not keep:
            self.sup.children.remove(child)
            child.stop()

    def sshnp_args(self) -> list[str]:
        assert self.sshd is not None
        return [
            "-f",
            ATSIGNS["client"],
            "-t",
            ATSIGNS["device"],
            "-r",
            ATSIGNS["relay"],
            "-d",
            DEVICE,
            "-i",
            str(self.sshd.user_key),
            "-u",
            self.sshd.user,
            "-o",
            f"UserKnownHostsFile={self.sshd.known_hosts}",
        ]

    def check_sshnp(self) -> None:
        if self.sshd is None:
            return
        self._require("sshnp")
        remote = "echo `date` `whoami` `hostname` TEST PASSED"
        child = self.sup.run(
            "sshnp",
            python_argv(
                "noports.cli.sshnp", *self.sshnp_args(), "-o", "BatchMode=yes", "--", remote
            ),
            timeout=self.timeout,
        )
        out = child.text("out")
        line = next((x for x in out.splitlines() if "TEST PASSED" in x), None)
        if child.popen.returncode != 0 or line is None:
            raise QuickstartError(
                f"sshnp check failed (exit {child.popen.returncode}): {child.tail()}"
            )
        self.checks.append("sshnp")
        self.say(f"[ok] sshnp check: {line.strip()}")

    def next_steps(self) -> str:
        keys = self.layout.keys(ATSIGNS["client"])
        q = shlex.quote
        lines = [
            "",
            "Everything is running. In another shell:",
            f"  export NOPORTS_ROOT={q(self.root)}",
            f"  export NOPORTS_CA_FILE={q(self.ca_file)}",
            f"  npt {shlex.join(self.npt_args())} -k {q(str(keys))}",
            "  curl http://127.0.0.1:<the port npt prints>/",
        ]
        if self.npt_port:
            lines.append(
                f"  (or use the tunnel this quickstart keeps open: "
                f"curl http://127.0.0.1:{self.npt_port}/)"
            )
        if self.sshd is not None:
            lines.append(f"  sshnp {shlex.join(self.sshnp_args())} -k {q(str(keys))}")
        lines += [f"Logs: {self.layout.logs}", "Press Ctrl-C to stop everything."]
        return "\n".join(lines)

    # -- the whole run ----------------------------------------------------------------------

    def run(self, *, exit_after: bool, wait: Callable[[], None] | None = None) -> int:
        try:
            self.say(f"noports quickstart in {self.layout.data}")
            self.start_server()
            self.activate()
            self.start_services()
            self.start_noports()
            self.check_npt(keep=not exit_after)
            self.check_sshnp()
            self.say(f"[ok] all checks passed ({', '.join(self.checks)})")
            if exit_after:
                return 0
            self.say(self.next_steps())
            (wait or self.watch)()
            return 0
        finally:
            self.close()

    def watch(self) -> None:
        """Block until a signal (raised as Interrupted) or a child dies (an error)."""
        while True:
            dead = self.sup.dead()
            if dead is not None:
                raise QuickstartError(
                    f"{dead.name} exited with code {dead.popen.returncode}: {dead.tail()}"
                )
            time.sleep(0.5)

    def close(self) -> None:
        self.sup.close()
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.own_dir:
            shutil.rmtree(self.layout.data, ignore_errors=True)


def _whoami() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER") or "root"


def check_data_dir(path: str) -> Path:
    p = Path(path).expanduser().resolve()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--data-dir {p} is not a directory")
    return p
