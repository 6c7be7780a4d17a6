"""Application benchmarks: the real programs end to end (DESIGN.md section 4).

One rig per module, every party its own process, as deployed: the embedded server
(``noports server``), the relay (``srvd``), the device daemon (``sshnpd``), a real OpenSSH
sshd (``tests/sshd.py``), and the clients (``npt``, ``sshnp``) started exactly as a user
starts them (``python -m noports.cli.<prog>`` in an isolated HOME, ``tests/fixtures_np.py``).

* **Session set-up**: command start (just before ``Popen``) to the first byte through the
  tunnel: the sshd banner read from the port the client printed. ``npt`` runs inline with
  ``--output json`` (its ``ready`` event carries the port and its own timings); ``sshnp -x
  --output json`` prints the port and exits (the tunnel stays in a detached child). Median
  and p95 over ``SETUP_RUNS`` runs, with the in-process figures (from entering ``run`` to
  ready, the atServer connect, the protocol) kept in ``extra_info``. Baseline: the bare
  interpreter start (``python -c pass``, same environment), measured interleaved. With
  ``NOPORTS_BENCH_REF=<another checkout>`` (e.g. ``git worktree`` or ``git archive`` of an
  older revision, with its ``_speedups`` built) each round also runs the client from that
  checkout, alternating which goes first, and the table compares the two (the rig's
  server, relay and daemon stay this checkout's). ``npt`` is also run, interleaved, the way
  a wheel user runs it: the test venv installs noports editable, and its import finder (a
  ``.pth`` hook run by ``site``, ~14 ms per start) is something an installed wheel never
  pays; ``python -S`` with ``PYTHONPATH=<checkout>:<site-packages>`` skips it (and the rest of
  ``site``, ~2 ms a wheel user does pay), against ``python -S -c pass``. The pre-run row is
  start to entering ``run`` (interpreter, imports, flags): the ready event's time minus the
  in-process time.
* **Bulk throughput**: ``BULK`` bytes from the sender helper (``bench._loads``) through
  ``npt --require-aead`` -> ``srvd`` -> ``sshnpd`` to a sink in this process, against
  ``ssh -L`` (aes128-gcm) through the same sshd to the same sink, interleaved, ``ROUNDS``
  rounds each. The sink is a service the daemon permits (``--permit-open``). CPU per GB of
  each party comes from ``/proc`` (process trees: npt; sshnpd and its tunnel ends; srvd;
  ssh; sshd).

Everything is bounded (every wait has a deadline) and every process is stopped at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench._loads import GB, QUICK, Proc, SshForward, listener, load_average, transfer, tree_cpu
from bench.conftest import record
from tests.fixtures_at import AtServerProcess
from tests.fixtures_np import NpEnv
from tests.test_sshnp_rig import Rig

SETUP_RUNS = 8 if QUICK else 20
BULK = (256 << 20) if QUICK else (1 << 30)
ROUNDS = 1 if QUICK else 2
SSH_CIPHER = "aes128-gcm@openssh.com"
REF = os.environ.get("NOPORTS_BENCH_REF") or None  # a second checkout's client, side by side

pytestmark = pytest.mark.timeout(900)


class AppRig:
    """The embedded server, srvd, sshd and one sshnpd that permits the sshd and the sink."""

    def __init__(self, base: Path) -> None:
        self.stack = contextlib.ExitStack()
        try:
            self.server = AtServerProcess(base / "server").start()
            self.stack.callback(self.server.stop)
            home = base / "home"
            home.mkdir(mode=0o700)
            self.env = NpEnv(self.server, home, secrets.token_hex(3))
            self.stack.callback(self.env.close)
            self.rig = Rig(self.env)  # srvd and sshd
            self.sink = self.stack.enter_context(listener())
            self.sink_port = self.sink.getsockname()[1]
            self.daemon = self.rig.daemon(
                "bench",
                permit=f"localhost:{self.rig.sshd.port},localhost:{self.sink_port}",
            )
        except BaseException:
            self.stack.close()
            raise

    def npt_argv(self, port: int, *extra: str) -> list[str]:
        return self.env.argv("npt", *self.rig.base("bench"), "-p", str(port), *extra)

    def sshnp_argv(self, *extra: str) -> list[str]:
        return self.env.argv("sshnp", *self.rig.base("bench"), "-u", self.rig.user, *extra)

    def popen(
        self, argv: list[str], pythonpath: str | None = None, **kw: object
    ) -> subprocess.Popen[bytes]:
        env = dict(self.env.env)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        return subprocess.Popen(
            argv,
            env=env,
            cwd=str(self.env.home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **kw,  # type: ignore[arg-type]
        )

    def close(self) -> None:
        self.stack.close()


@pytest.fixture(scope="module")
def app_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppRig]:
    r = AppRig(tmp_path_factory.mktemp("apps"))
    try:
        yield r
    finally:
        r.close()


def _stop(p: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, 15)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 9)
            p.wait(5)
    for f in (p.stdout, p.stderr):
        if f is not None:
            f.close()


def _read_line(p: subprocess.Popen[bytes], timeout: float) -> bytes:
    """One stdout line within ``timeout`` (or the process's stderr in the error)."""
    import select

    assert p.stdout is not None
    fd = p.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        r, _, _ = select.select([fd], [], [], max(left, 0))
        if not r:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    if b"\n" not in buf:
        _stop_err = b""
        if p.poll() is not None and p.stderr is not None:
            _stop_err = p.stderr.read()[-2000:]
        raise AssertionError(f"no ready line within {timeout:g} s: {buf!r} {_stop_err!r}")
    return buf.split(b"\n", 1)[0]


def _banner(port: int, timeout: float = 10.0) -> float:
    """Connect to 127.0.0.1:port; return the time the first byte (the SSH banner) arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        data = s.recv(64)
        t = time.monotonic()
    assert data.startswith(b"SSH-"), data
    return t


def _bare_python(env: dict[str, str], cwd: str, *flags: str) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, *flags, "-c", "pass"], env=env, cwd=cwd, check=True, timeout=30)
    return (time.monotonic() - t0) * 1000


#: PYTHONPATH for ``python -S``: this checkout, then the venv's packages (no ``.pth`` hooks)
NO_SITE_PATH = os.pathsep.join(
    (str(Path(__file__).resolve().parent.parent), sysconfig.get_paths()["purelib"])
)


def _no_site(argv: list[str]) -> list[str]:
    """``argv`` (``python -m ...``) without ``site``: as a wheel install starts, less ``site``."""
    assert argv[0] == sys.executable and argv[1] == "-m", argv
    return [argv[0], "-S", *argv[1:]]


def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))]


def _setup_rows(
    benchmark, scenario: str, runs: dict[str, list[float]], target: str = "<= 300 ms"
) -> None:
    total, bare = runs["total_ms"], runs["python_ms"]
    summary = {
        k: {"median": statistics.median(v), "p95": _pct(v, 0.95), "min": min(v), "max": max(v)}
        for k, v in runs.items()
        if v
    }
    record(
        benchmark,
        scenario=scenario,
        metric="start -> first byte, median",
        value=statistics.median(total),
        unit="ms",
        baseline="python -c pass",
        baseline_value=statistics.median(bare),
        target=target,
        higher_is_better=False,
        summary=summary,
        raw=runs,
        load=load_average(),
    )
    record(
        benchmark,
        scenario=scenario,
        metric="start -> first byte, p95",
        value=_pct(total, 0.95),
        unit="ms",
        higher_is_better=False,
    )
    if runs.get("ref_total_ms"):
        ref = runs["ref_total_ms"]
        for q, label in ((None, "median"), (0.95, "p95")):
            record(
                benchmark,
                scenario=scenario,
                metric=f"start -> first byte, {label}, vs reference checkout",
                value=statistics.median(total) if q is None else _pct(total, q),
                unit="ms",
                baseline=f"reference ({REF})",
                baseline_value=statistics.median(ref) if q is None else _pct(ref, q),
                higher_is_better=False,
            )
    if runs.get("nosite_total_ms"):
        record(
            benchmark,
            scenario=scenario,
            metric="start -> first byte, median, without the editable finder (python -S)",
            value=statistics.median(runs["nosite_total_ms"]),
            unit="ms",
            baseline="python -S -c pass",
            baseline_value=statistics.median(runs["nosite_python_ms"]),
            target="<= 80 ms",
            higher_is_better=False,
        )
    for key, label in (
        ("cpu_ms", "client CPU to first byte (all threads), median"),
        ("agent_cpu_ms", "agent CPU per set-up (noports agent), mean"),
        ("pre_run_ms", "pre-run (start -> run: interpreter, imports, flags), median"),
        ("nosite_pre_run_ms", "pre-run without the editable finder (python -S), median"),
        ("in_process_ms", "in-process (run -> ready), median"),
        ("at_connect_ms", "atServer connect (keys, TLS, PKAM), median"),
        ("protocol_ms", "protocol set-up, median"),
        ("first_byte_ms", "ready -> first byte, median"),
    ):
        if runs.get(key):
            ref = runs.get(f"ref_{key}")
            record(
                benchmark,
                scenario=scenario,
                metric=label,
                value=statistics.mean(runs[key])
                if label.endswith("mean")
                else statistics.median(runs[key]),
                unit="ms",
                baseline="reference checkout" if ref else None,
                baseline_value=statistics.median(ref) if ref else None,
                higher_is_better=False,
            )


def _cpu_ms(pid: int) -> float:
    """User + system CPU of a live process (all its threads) so far, from /proc (10 ms ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def _npt_once(ar: AppRig, argv: list[str], pythonpath: str | None) -> dict[str, float]:
    t0 = time.monotonic()
    p = ar.popen(argv, pythonpath)
    try:
        ev = json.loads(_read_line(p, 30))
        t_ready = time.monotonic()
        t1 = _banner(ev["port"])
        cpu = _cpu_ms(p.pid)
    finally:
        _stop(p)
    assert ev["event"] == "ready" and ev["mode"] == "aead", ev
    return {
        "cpu_ms": cpu,
        "total_ms": (t1 - t0) * 1000,
        "first_byte_ms": (t1 - t_ready) * 1000,
        "in_process_ms": ev["setupMs"],
        "pre_run_ms": (t_ready - t0) * 1000 - ev["setupMs"],
        "at_connect_ms": ev["timingsMs"]["atConnect"],
        "protocol_ms": ev["timingsMs"]["keys"],
    }


def _sshnp_once(ar: AppRig, argv: list[str], pythonpath: str | None) -> dict[str, float]:
    t0 = time.monotonic()
    p = ar.popen(argv, pythonpath)
    try:
        ev = json.loads(_read_line(p, 30))
        t_ready = time.monotonic()
        t1 = _banner(ev["port"])
        p.wait(30)
    finally:
        _stop(p)
    assert p.returncode == 0, p.returncode
    return {
        "total_ms": (t1 - t0) * 1000,
        "first_byte_ms": (t1 - t_ready) * 1000,
        "protocol_ms": ev["timingsMs"]["keys"],
    }


def _setup_bench(
    benchmark,
    ar: AppRig,
    scenario: str,
    one,
    argv: list[str],
    no_site: bool = False,
    target: str = "<= 300 ms",
    ref: str | None = REF,
) -> dict[str, list[float]]:
    """``SETUP_RUNS`` measured rounds after one warm-up; each round also times the bare
    interpreter and, with ``NOPORTS_BENCH_REF``, the reference checkout's client (the two
    alternate which goes first); with ``no_site``, also the client and the bare interpreter
    under ``python -S`` (no editable finder, see the module doc)."""
    runs: dict[str, list[float]] = {"total_ms": [], "python_ms": [], "ref_total_ms": []}
    n = [0]

    def once() -> None:
        order = [None, ref] if ref else [None]
        if n[0] % 2:
            order.reverse()
        n[0] += 1
        for pp in order:
            got = one(ar, argv, pp)
            if pp is None:
                for k, v in got.items():
                    runs.setdefault(k, []).append(v)
            else:
                for k, v in got.items():
                    runs.setdefault(f"ref_{k}", []).append(v)
        runs["python_ms"].append(_bare_python(ar.env.env, str(ar.env.home)))
        if no_site:
            for k, v in one(ar, _no_site(argv), NO_SITE_PATH).items():
                runs.setdefault(f"nosite_{k}", []).append(v)
            env = {**ar.env.env, "PYTHONPATH": NO_SITE_PATH}
            runs.setdefault("nosite_python_ms", []).append(
                _bare_python(env, str(ar.env.home), "-S")
            )

    once()  # warm-up: caches (shared keys on the server, page cache), not recorded
    for v in runs.values():
        v.clear()
    benchmark.pedantic(once, rounds=SETUP_RUNS, iterations=1)
    _setup_rows(benchmark, scenario, runs, target)
    return runs


def test_setup_npt(benchmark, app_rig: AppRig) -> None:
    """npt start -> ready event -> the sshd banner through the tunnel."""
    argv = app_rig.npt_argv(app_rig.rig.sshd.port, "--output", "json", "-q", "-T", "5s")
    _setup_bench(benchmark, app_rig, "session set-up, npt", _npt_once, argv, no_site=True)


def test_setup_npt_require_aead(benchmark, app_rig: AppRig) -> None:
    """npt --require-aead: the feature check, then an X25519 key instead of RSA-2048."""
    argv = app_rig.npt_argv(
        app_rig.rig.sshd.port, "--output", "json", "-q", "-T", "5s", "--require-aead"
    )
    _setup_bench(
        benchmark, app_rig, "session set-up, npt --require-aead", _npt_once, argv, no_site=True
    )


def _npt_agent_once(
    ar: AppRig, argv: list[str], pythonpath: str | None, agent_pid: int
) -> dict[str, float]:
    """One set-up through the thin ``npt`` front and the resident agent: the front's own
    CPU, and the agent's CPU over the set-up (from /proc, 10 ms ticks: a mean is kept)."""
    a0 = _cpu_ms(agent_pid)
    t0 = time.monotonic()
    p = ar.popen(argv, pythonpath)
    try:
        ev = json.loads(_read_line(p, 30))
        t_ready = time.monotonic()
        t1 = _banner(ev["port"])
        cpu = _cpu_ms(p.pid)
        agent_cpu = _cpu_ms(agent_pid) - a0
    finally:
        _stop(p)
    assert ev["event"] == "ready" and ev["mode"] == "aead", ev
    return {
        "cpu_ms": cpu,
        "agent_cpu_ms": agent_cpu,
        "total_ms": (t1 - t0) * 1000,
        "first_byte_ms": (t1 - t_ready) * 1000,
        "in_process_ms": ev["setupMs"],
        "pre_run_ms": (t_ready - t0) * 1000 - ev["setupMs"],
        "protocol_ms": ev["timingsMs"]["keys"],
    }


def _agent_bench(benchmark, ar: AppRig, scenario: str, *extra: str) -> None:
    """``noports agent`` started once; one cold request (its atClient connects in the
    request: reported, not in the median), then ``SETUP_RUNS`` through the warm agent."""
    sock = str(ar.env.home / "agent-run" / "agent.sock")
    ar.env.env["NOPORTS_AGENT_SOCKET"] = sock
    agent = ar.popen([sys.executable, "-m", "noports.cli.agent", "--socket", sock, "--idle", "0"])
    try:
        assert agent.stderr is not None
        line = agent.stderr.readline()
        assert b"listening on" in line, line
        import threading  # drain the agent's log: a full pipe would stall it

        threading.Thread(target=agent.stderr.read, daemon=True).start()
        argv = [
            sys.executable,
            "-m",
            "noports.npt_front",
            *ar.rig.base("bench"),
            "-p",
            str(ar.rig.sshd.port),
            "--output",
            "json",
            "-q",
            "-T",
            "5s",
            *extra,
        ]
        cold = _npt_agent_once(ar, argv, None, agent.pid)
        inproc = ar.npt_argv(ar.rig.sshd.port, "--output", "json", "-q", "-T", "5s", *extra)
        turn = [0]

        def one(ar: AppRig, argv: list[str], pp: str | None) -> dict[str, float]:
            if pp is not None:  # the python -S variant
                return _npt_agent_once(ar, argv, pp, agent.pid)
            # side by side: the same npt in-process (python -m noports.cli.npt), alternating
            # which goes first
            turn[0] += 1
            if turn[0] % 2:
                got = _npt_agent_once(ar, argv, pp, agent.pid)
                here = _npt_once(ar, inproc, None)
            else:
                here = _npt_once(ar, inproc, None)
                got = _npt_agent_once(ar, argv, pp, agent.pid)
            got["inproc_total_ms"] = here["total_ms"]
            return got

        runs = _setup_bench(
            benchmark, ar, scenario, one, argv, no_site=True, target="<= 80 ms", ref=None
        )
        record(
            benchmark,
            scenario=scenario,
            metric="start -> first byte, median, vs in-process npt (interleaved)",
            value=statistics.median(runs["total_ms"]),
            unit="ms",
            baseline="npt in-process, same rounds",
            baseline_value=statistics.median(runs["inproc_total_ms"]),
            higher_is_better=False,
        )
        record(
            benchmark,
            scenario=scenario,
            metric="first request (cold: the agent connects its atClient), start -> first byte",
            value=cold["total_ms"],
            unit="ms",
            higher_is_better=False,
        )
    finally:
        ar.env.env.pop("NOPORTS_AGENT_SOCKET", None)
        _stop(agent)


def test_setup_npt_agent(benchmark, app_rig: AppRig) -> None:
    """npt (the thin front) -> a warm ``noports agent`` -> ready -> the sshd banner."""
    _agent_bench(benchmark, app_rig, "session set-up, npt via noports agent")


def test_setup_npt_agent_require_aead(benchmark, app_rig: AppRig) -> None:
    """The same with --require-aead (X25519 instead of the agent's pre-made RSA key)."""
    _agent_bench(
        benchmark,
        app_rig,
        "session set-up, npt --require-aead via noports agent",
        "--require-aead",
    )


def test_setup_sshnp(benchmark, app_rig: AppRig) -> None:
    """sshnp -x start -> printed port -> the sshd banner through the tunnel."""
    argv = app_rig.sshnp_argv("-x", "-q", "--output", "json")
    _setup_bench(benchmark, app_rig, "session set-up, sshnp -x", _sshnp_once, argv)


def test_npt_throughput(benchmark, app_rig: AppRig) -> None:
    """BULK bytes sender -> npt (AEAD) -> srvd -> sshnpd -> sink, vs ssh -L (aes128-gcm)."""
    ar = app_rig
    sshd = ar.rig.sshd
    res: dict[str, list[float]] = {"npt": [], "ssh": []}
    cpu: dict[str, list[float]] = {
        k: [] for k in ("npt", "sshnpd", "srvd", "ssh", "sshd", "npt_path", "ssh_path")
    }
    gb = BULK / GB
    with Proc(["sender"], name="sender") as sender:

        def baseline() -> None:
            with SshForward(sshd, ar.sink_port, SSH_CIPHER) as fwd:
                sshd0 = tree_cpu(sshd.proc.pid)
                res["ssh"].append(
                    transfer(sender, ar.sink, "127.0.0.1", fwd.port, BULK, accept=True).gbps
                )
                sshd_s = tree_cpu(sshd.proc.pid) - sshd0  # before ssh leaves and they exit
                ssh_s = fwd.stop()
            cpu["sshd"].append(sshd_s / gb)
            if ssh_s is not None:
                cpu["ssh"].append(ssh_s / gb)
                cpu["ssh_path"].append((ssh_s + sshd_s) / gb)

        def setup():
            baseline()
            p = ar.popen(
                ar.npt_argv(ar.sink_port, "--require-aead", "--output", "json", "-q", "-T", "60s")
            )
            try:
                ev = json.loads(_read_line(p, 30))
            except BaseException:
                _stop(p)
                raise
            assert ev["mode"] == "aead", ev
            return (p, ev["port"]), {}

        def run(p: subprocess.Popen[bytes], port: int) -> None:
            try:
                c0 = {
                    "npt": tree_cpu(p.pid),
                    "sshnpd": tree_cpu(ar.daemon.pid),
                    "srvd": tree_cpu(ar.rig.srvd.pid),
                }
                got = transfer(sender, ar.sink, "127.0.0.1", port, BULK, accept=True)
                c1 = {
                    "npt": tree_cpu(p.pid),
                    "sshnpd": tree_cpu(ar.daemon.pid),
                    "srvd": tree_cpu(ar.rig.srvd.pid),
                }
            finally:
                _stop(p)
            res["npt"].append(got.gbps)
            for k in c0:
                cpu[k].append((c1[k] - c0[k]) / gb)
            cpu["npt_path"].append(sum(c1[k] - c0[k] for k in c0) / gb)

        benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    med = {k: statistics.median(v) for k, v in res.items()}
    scen = "npt bulk, AEAD via srvd"
    record(
        benchmark,
        scenario=scen,
        metric="receiver GB/s",
        value=med["npt"],
        unit="GB/s",
        baseline="ssh -L aes128-gcm",
        baseline_value=med["ssh"],
        target=">= 1.25x",
        rounds=res,
        cpu_per_gb=cpu,
        bytes_per_round=BULK,
        load=load_average(),
    )

    def m(k: str) -> float | None:
        return statistics.median(cpu[k]) if cpu[k] else None

    for label, k, base, bk in (
        ("npt CPU s/GB", "npt", "ssh client", "ssh"),
        ("sshnpd CPU s/GB (with its tunnel ends)", "sshnpd", "sshd", "sshd"),
        ("srvd CPU s/GB", "srvd", None, None),
        ("path CPU s/GB (npt + srvd + sshnpd)", "npt_path", "ssh + sshd", "ssh_path"),
    ):
        v = m(k)
        if v is None:
            continue
        record(
            benchmark,
            scenario=scen,
            metric=label,
            value=v,
            unit="s/GB",
            baseline=base if bk and m(bk) is not None else None,
            baseline_value=m(bk) if bk else None,
            higher_is_better=False,
        )
