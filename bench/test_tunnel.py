"""Encrypted tunnel benchmarks: client end -> relay -> daemon end -> local sink, vs ``ssh -L``.

Every party is its own process, as deployed: the sender (a local application), the client
end, the relay, the daemon end, and the sink (this process, which measures). The baseline
is ``ssh -L`` through a real OpenSSH sshd on loopback (``tests/sshd.py``): sender -> ssh ->
sshd -> sink. Both carry the same bytes in the same direction (client to daemon).
"""

from __future__ import annotations

import contextlib
import statistics

from bench._loads import (
    GB,
    PERIOD,
    QUICK,
    MultiEnds,
    Proc,
    RelayProc,
    SshForward,
    TunnelEnds,
    connect,
    listener,
    load_average,
    paced_pings,
    pattern,
    pingpong,
    start_sshd,
    summary,
    transfer,
    tree_cpu,
)
from bench.conftest import record
from noports.tunnel import AeadKeys, CtrKeys

BULK = (256 << 20) if QUICK else (1 << 30)
ROUNDS = 1 if QUICK else 2
RTT_BLOCKS, RTT_PER_BLOCK = (2, 250) if QUICK else (4, 500)
SSH_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _tunnel_throughput(benchmark, impl, keys, tmp_path, make_crypto, scenario: str) -> None:
    ka, kb = keys("@bench_a"), keys("@bench_b")
    res: dict[str, list[float]] = {"tunnel": [], **{c: [] for c in SSH_CIPHERS}}
    ends_cpu: list[dict[str, float]] = []
    ssh_cpu: dict[str, list[float]] = {c: [] for c in SSH_CIPHERS}
    sshd_cpu: dict[str, list[float]] = {c: [] for c in SSH_CIPHERS}
    with contextlib.ExitStack() as stack:
        sshd = start_sshd(tmp_path / "sshd")
        stack.callback(sshd.close)
        relay = stack.enter_context(RelayProc(impl))
        sender = stack.enter_context(Proc(["sender"], name="sender"))
        sink = stack.enter_context(listener())
        sink_port = sink.getsockname()[1]
        state: dict[str, object] = {}

        def setup():
            for cipher in SSH_CIPHERS:
                with SshForward(sshd, sink_port, cipher) as fwd:
                    sshd0 = tree_cpu(sshd.proc.pid)
                    res[cipher].append(
                        transfer(sender, sink, "127.0.0.1", fwd.port, BULK, accept=True).gbps
                    )
                    # the per-connection sshd processes, before ssh leaves and they exit
                    sshd_cpu[cipher].append((tree_cpu(sshd.proc.pid) - sshd0) / (BULK / GB))
                    cpu = fwd.stop()
                    if cpu is not None:
                        ssh_cpu[cipher].append(cpu / (BULK / GB))
            (sess,), _ = relay.sessions(1, ka, kb, f"t{len(res['tunnel'])}")
            ends = TunnelEnds(sess, make_crypto(sess.sid), impl, sink_port)
            state["ends"] = ends
            state["cpu0"] = relay.stats()["cpu"]
            local, _ = sink.accept()  # the daemon end connected the service first
            return (ends, local), {}

        def run(ends, local):
            try:
                got = transfer(sender, local, "127.0.0.1", ends.port, BULK)
                c, d = ends.finish()
                assert c["up"] == BULK and d["down"] == BULK, (c, d)
                gb = BULK / GB
                relay_cpu = relay.stats()["cpu"] - state["cpu0"]
                ends_cpu.append(
                    {
                        "client": c["cpu"] / gb,
                        "daemon": d["cpu"] / gb,
                        "relay": relay_cpu / gb,
                        "client_user_sys": [c["user"] / gb, c["sys"] / gb],
                        "daemon_user_sys": [d["user"] / gb, d["sys"] / gb],
                    }
                )
            finally:
                ends.close()
            res["tunnel"].append(got.gbps)
            return got

        try:
            benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
        finally:
            ends = state.get("ends")
            if ends is not None:
                ends.close()
        relay.close_sessions()
    med = {k: statistics.median(v) for k, v in res.items()}
    record(
        benchmark,
        scenario=scenario,
        metric="receiver GB/s",
        value=med["tunnel"],
        unit="GB/s",
        baseline="ssh -L aes128-gcm",
        baseline_value=med[SSH_CIPHERS[0]],
        target=">= 1.25x",
        rounds=res,
        ends_cpu=ends_cpu,
        load=load_average(),
        bytes_per_round=BULK,
    )
    record(
        benchmark,
        scenario=scenario,
        metric="receiver GB/s",
        value=med["tunnel"],
        unit="GB/s",
        baseline="ssh -L aes256-gcm",
        baseline_value=med[SSH_CIPHERS[1]],
    )
    base = {
        "client": ("ssh client (aes128-gcm)", ssh_cpu[SSH_CIPHERS[0]]),
        "daemon": ("sshd (aes128-gcm)", sshd_cpu[SSH_CIPHERS[0]]),
        "relay": (None, []),
    }
    for who in ("client", "daemon", "relay"):
        name = {"client": "client end", "daemon": "daemon end", "relay": "relay"}[who]
        bname, bvals = base[who]
        record(
            benchmark,
            scenario=scenario,
            metric=f"{name} CPU s/GB",
            value=statistics.median(c[who] for c in ends_cpu),
            unit="s/GB",
            baseline=bname if bvals else None,
            baseline_value=statistics.median(bvals) if bvals else None,
            higher_is_better=False,
            ssh_cpu=ssh_cpu if who == "client" else None,
            sshd_cpu=sshd_cpu if who == "daemon" else None,
        )
    total = [c["client"] + c["daemon"] + c["relay"] for c in ends_cpu]
    ssh_total = [
        a + b for a, b in zip(ssh_cpu[SSH_CIPHERS[0]], sshd_cpu[SSH_CIPHERS[0]], strict=False)
    ]
    record(
        benchmark,
        scenario=scenario,
        metric="path CPU s/GB (ends + relay)",
        value=statistics.median(total),
        unit="s/GB",
        baseline="ssh + sshd (aes128-gcm)" if ssh_total else None,
        baseline_value=statistics.median(ssh_total) if ssh_total else None,
        higher_is_better=False,
    )


def test_tunnel_throughput_aead(benchmark, impl, keys, tmp_path):
    """The strong mode (AEAD records) end to end through the relay."""
    _tunnel_throughput(
        benchmark, impl, keys, tmp_path, lambda sid: AeadKeys.generate(sid), "tunnel bulk, AEAD"
    )


def test_tunnel_throughput_ctr(benchmark, impl, keys, tmp_path):
    """Legacy AES-256-CTR (one key and IV both ways, as the official tools) end to end."""
    _tunnel_throughput(
        benchmark,
        impl,
        keys,
        tmp_path,
        lambda sid: CtrKeys.generate(twin=False),
        "tunnel bulk, legacy CTR",
    )


def _sized_pingpong(sock, n: int, size: int) -> list[float]:
    """``n`` timed round trips of ``size`` bytes (``pingpong`` for any size); microseconds."""
    import time

    sock.settimeout(10)
    pat = pattern()
    buf = bytearray(size)
    mv = memoryview(buf)
    perf = time.perf_counter_ns
    out: list[float] = []
    for i in range(n):
        off = (i * 97) % PERIOD
        msg = pat[off : off + size]
        t0 = perf()
        sock.sendall(msg)
        got = 0
        while got < size:
            k = sock.recv_into(mv[got:])
            if not k:
                raise AssertionError("echo closed the connection")
            got += k
        t1 = perf()
        if buf != msg:
            raise AssertionError(f"round trip {i} came back altered")
        out.append((t1 - t0) / 1000)
    return out


def _sched_ns(pid: int) -> int:
    """CPU time (user + system, ns) of ``pid``'s threads: /proc/<pid>/task/*/schedstat is
    exact where /proc/<pid>/stat counts 10 ms ticks (a round trip costs tens of us)."""
    import os

    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def _tree_sched_ns(root: int) -> int:
    """``_sched_ns`` of ``root`` and its live descendants (sshd's per-connection processes)."""
    import os

    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                kids.setdefault(int(st[st.rindex(")") + 2 :].split()[1]), []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    todo, total = [root], 0
    while todo:
        pid = todo.pop()
        total += _sched_ns(pid)
        todo += kids.get(pid, [])
    return total


def _tunnel_rtt(benchmark, impl, keys, tmp_path, size: int) -> None:
    """``size``-byte ping-pong: direct vs full tunnel (AEAD, CTR, and clear: the floor of the
    three hops without a cipher) vs ssh -L (aes128-gcm), interleaved in blocks; CPU per round
    trip of each AEAD tunnel end and of ssh and sshd, over the timed round trips only."""
    ka, kb = keys("@bench_a"), keys("@bench_b")
    out: dict[str, list[float]] = {}
    tunnels: dict[str, TunnelEnds] = {}
    cpu_per_rt: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        sshd = start_sshd(tmp_path / "sshd")
        stack.callback(sshd.close)
        relay = stack.enter_context(RelayProc(impl))
        echo = stack.enter_context(Proc(["echo"], name="echo"))
        port = echo.call({"op": "listen"})["port"]
        socks = {"direct": stack.enter_context(connect("127.0.0.1", port, nodelay=True))}
        for name, make in (
            ("aead", lambda sid: AeadKeys.generate(sid)),
            ("ctr", lambda sid: CtrKeys.generate(twin=False)),
            ("clear", lambda sid: None),  # no cipher: what the three hops cost by themselves
        ):
            (sess,), _ = relay.sessions(1, ka, kb, f"rtt{size}-{name}")
            ends = stack.enter_context(TunnelEnds(sess, make(sess.sid), impl, port))
            tunnels[name] = ends
            socks[name] = stack.enter_context(connect("127.0.0.1", ends.port, nodelay=True))
        fwd = stack.enter_context(SshForward(sshd, port, SSH_CIPHERS[0]))
        socks["ssh"] = stack.enter_context(connect("127.0.0.1", fwd.port, nodelay=True))

        def blocks(n: int, per: int) -> dict[str, list[float]]:
            got: dict[str, list[float]] = {k: [] for k in socks}
            for _ in range(n):
                for name, sock in socks.items():
                    got[name] += _sized_pingpong(sock, per, size)
            return got

        blocks(1, 200)  # warm-up: pairs formed, ssh channel open, buffers sized
        pids = {
            "client": tunnels["aead"].client.pid,
            "daemon": tunnels["aead"].daemon.pid,
            "ssh": fwd.proc.pid,
        }
        cpu0 = {k: _sched_ns(p) for k, p in pids.items()}
        cpu0["sshd"] = _tree_sched_ns(sshd.proc.pid)

        def run():
            out.update(blocks(RTT_BLOCKS, RTT_PER_BLOCK))

        benchmark.pedantic(run, rounds=1, iterations=1)
        n_rt = RTT_BLOCKS * RTT_PER_BLOCK
        cpu1 = {k: _sched_ns(p) for k, p in pids.items()}
        cpu1["sshd"] = _tree_sched_ns(sshd.proc.pid)
        cpu_per_rt["aead"] = {k: (cpu1[k] - cpu0[k]) / n_rt / 1000 for k in cpu0}
        for name, ends in tunnels.items():  # end the tunnels: each end reports its CPU
            socks[name].close()
            c, d = ends.finish()
            assert c["up"] == d["down"] == (200 + n_rt) * size, (c, d)
        relay.close_sessions()
    s = {k: summary(v, RTT_PER_BLOCK) for k, v in out.items()}
    d = s["direct"]["median"]
    scen = (
        f"{size} B round trip, tunnel" if size < 1024 else f"{size // 1024} KiB round trip, tunnel"
    )
    record(
        benchmark,
        scenario=scen,
        metric="median RTT, AEAD tunnel",
        value=s["aead"]["median"],
        unit="us",
        baseline="ssh -L aes128-gcm",
        baseline_value=s["ssh"]["median"],
        target="<= ssh -L (<= 1x)",
        higher_is_better=False,
        summaries=s,
        load=load_average(),
    )
    record(
        benchmark,
        scenario=scen,
        metric="median RTT, CTR tunnel",
        value=s["ctr"]["median"],
        unit="us",
        baseline="ssh -L aes128-gcm",
        baseline_value=s["ssh"]["median"],
        target="<= ssh -L (<= 1x)",
        higher_is_better=False,
    )
    record(
        benchmark,
        scenario=scen,
        metric="median RTT, clear tunnel (no cipher)",
        value=s["clear"]["median"],
        unit="us",
        baseline="ssh -L aes128-gcm",
        baseline_value=s["ssh"]["median"],
        higher_is_better=False,
    )
    record(
        benchmark,
        scenario=scen,
        metric="added per hop, AEAD (3 hops)",
        value=(s["aead"]["median"] - d) / 3,
        unit="us",
        baseline="ssh -L per hop (2 hops)",
        baseline_value=(s["ssh"]["median"] - d) / 2,
        target="<= 40 us",
        higher_is_better=False,
    )
    record(
        benchmark,
        scenario=scen,
        metric="p99 RTT, AEAD tunnel",
        value=s["aead"]["p99"],
        unit="us",
        baseline="ssh -L p99",
        baseline_value=s["ssh"]["p99"],
        higher_is_better=False,
    )
    record(
        benchmark,
        scenario=scen,
        metric="median RTT, direct",
        value=d,
        unit="us",
        higher_is_better=False,
    )
    rows = (
        ("client", "client end CPU per round trip, AEAD"),
        ("daemon", "daemon end CPU per round trip, AEAD"),
        ("ssh", "ssh client CPU per round trip (aes128-gcm)"),
        ("sshd", "sshd CPU per round trip (aes128-gcm)"),
    )
    for who, metric in rows:
        record(
            benchmark,
            scenario=scen,
            metric=metric,
            value=cpu_per_rt["aead"][who],
            unit="us",
            higher_is_better=False,
            cpu_per_rt=cpu_per_rt if who == "client" else None,
        )


def test_tunnel_rtt(benchmark, impl, keys, tmp_path):
    """64-byte ping-pong: direct vs full tunnel (AEAD and CTR) vs ssh -L (aes128-gcm).

    Hops added over direct: 3 processes for the tunnel (client end, relay, daemon end), 2 for
    ``ssh -L`` (ssh, sshd).
    """
    _tunnel_rtt(benchmark, impl, keys, tmp_path, 64)


def test_tunnel_rtt_1k(benchmark, impl, keys, tmp_path):
    """The same with 1 KiB messages (a screen update, a keystroke batch, an SMB request)."""
    _tunnel_rtt(benchmark, impl, keys, tmp_path, 1024)


MIXED_BULK = (256 << 20) if QUICK else (512 << 20)
MIXED_ROUNDS = 1 if QUICK else 2
MIXED_MAX_PINGS = 20000
MIXED_PERIOD_US = 10_000  # 100 messages/s: an interactive session's frames and input


def _ping_during_bulk(sender, service, port: int, nbytes: int) -> tuple[list[float], float]:
    """64-byte messages every ``MIXED_PERIOD_US`` (``paced_pings``) on one connection while
    another connection of the same session (same tunnel or same ssh connection) carries
    ``nbytes``; returns (latencies in us from each message's scheduled time, sink GB/s).

    Only messages due before the sink saw EOF count."""
    import select
    import socket
    import time

    with connect("127.0.0.1", port, nodelay=True) as ping:
        ping.sendall(b"E")
        pingpong(ping, 0, warmup=50)
        sender.send({"host": "127.0.0.1", "port": port, "first": "S", "nbytes": nbytes})
        time.sleep(0.15)  # the bulk connection is set up and flowing
        fd = service.popen.stdout.fileno()
        rtts = paced_pings(
            ping,
            MIXED_PERIOD_US,
            lambda: bool(select.select([fd], [], [], 0)[0]),  # the sink saw EOF: bulk over
            MIXED_MAX_PINGS,
        )
        ping.shutdown(socket.SHUT_WR)
    got = service.recv(120)
    done = sender.recv(60)
    assert got["sink"] == nbytes and done["sent"] == nbytes, (got, done)
    return rtts, nbytes / got["seconds"] / GB


def test_tunnel_mixed(benchmark, impl, keys, tmp_path):
    """Fairness: 64-byte round trips on one connection while another connection of the
    same session carries a bulk transfer (an RDP session beside an SMB copy), through one
    multi-mode tunnel (AEAD) against the same two connections through one ``ssh -L``
    (aes128-gcm). Interleaved rounds; p50/p99 latency of the paced messages (from each one's
    scheduled time), bulk GB/s at the sink.
    """
    ka, kb = keys("@bench_a"), keys("@bench_b")
    rtt: dict[str, list[float]] = {"tunnel": [], "ssh": []}
    gbps: dict[str, list[float]] = {"tunnel": [], "ssh": []}
    cpu: dict[str, list[float]] = {"client": [], "daemon": []}
    with contextlib.ExitStack() as stack:
        sshd = start_sshd(tmp_path / "sshd")
        stack.callback(sshd.close)
        relay = stack.enter_context(RelayProc(impl))
        service = stack.enter_context(Proc(["service"], name="service"))
        sport = service.recv(30)["port"]
        sender = stack.enter_context(Proc(["sender"], name="sender"))
        (sess,), _ = relay.sessions(1, ka, kb, "mixed")
        ends = stack.enter_context(MultiEnds(sess, AeadKeys.generate(sess.sid), impl, sport))
        fwd = stack.enter_context(SshForward(sshd, sport, SSH_CIPHERS[0]))

        def run():
            for _ in range(MIXED_ROUNDS):
                r, g = _ping_during_bulk(sender, service, fwd.port, MIXED_BULK)
                rtt["ssh"] += r
                gbps["ssh"].append(g)
                c0, d0 = ends.cpu()
                r, g = _ping_during_bulk(sender, service, ends.port, MIXED_BULK)
                c1, d1 = ends.cpu()
                rtt["tunnel"] += r
                gbps["tunnel"].append(g)
                cpu["client"].append((c1["cpu"] - c0["cpu"]) / (MIXED_BULK / GB))
                cpu["daemon"].append((d1["cpu"] - d0["cpu"]) / (MIXED_BULK / GB))
                assert c1["failed"] == 0 and d1["failed"] == 0, (c1, d1)

        benchmark.pedantic(run, rounds=1, iterations=1)
        relay.close_sessions()
    s = {k: summary(v) for k, v in rtt.items()}
    scen = "mixed: 64 B RTT during bulk, 1 session"
    record(
        benchmark,
        scenario=scen,
        metric="p50 RTT during bulk, AEAD",
        value=s["tunnel"]["median"],
        unit="us",
        baseline="ssh -L aes128-gcm",
        baseline_value=s["ssh"]["median"],
        target="<= ssh -L (<= 1x)",
        higher_is_better=False,
        summaries=s,
        load=load_average(),
    )
    record(
        benchmark,
        scenario=scen,
        metric="p99 RTT during bulk, AEAD",
        value=s["tunnel"]["p99"],
        unit="us",
        baseline="ssh -L p99",
        baseline_value=s["ssh"]["p99"],
        higher_is_better=False,
    )
    record(
        benchmark,
        scenario=scen,
        metric="bulk GB/s beside the round trips",
        value=statistics.median(gbps["tunnel"]),
        unit="GB/s",
        baseline="ssh -L aes128-gcm",
        baseline_value=statistics.median(gbps["ssh"]),
        rounds=gbps,
    )
    for who in ("client", "daemon"):
        record(
            benchmark,
            scenario=scen,
            metric=f"{who} end CPU s/GB (bulk + pings)",
            value=statistics.median(cpu[who]),
            unit="s/GB",
            higher_is_better=False,
        )


PAR_STREAMS = 8
PAR_BULK = (256 << 20) if QUICK else (1 << 30)  # in all, split between the streams
PAR_ROUNDS = 1 if QUICK else 2


def _parallel(senders, service, port: int, total: int) -> dict[str, float]:
    """``len(senders)`` connections at once, ``total`` bytes in all; aggregate GB/s from the
    first byte at any sink to the last EOF, the slowest/fastest stream ratio, and how long
    after the first stream's first byte the last stream's first byte came (ms: connections
    of a session set up one after another while the first ones already stream)."""
    each = total // len(senders)
    for s in senders:
        s.send({"host": "127.0.0.1", "port": port, "first": "S", "nbytes": each})
    got = [service.recv(180) for _ in senders]
    for s in senders:
        assert s.recv(60)["sent"] == each
    assert all(g["sink"] == each for g in got), got
    t0, t1 = min(g["t0"] for g in got), max(g["t1"] for g in got)
    rates = [each / g["seconds"] for g in got]
    return {
        "gbps": each * len(senders) / (t1 - t0) / GB,
        "fair": min(rates) / max(rates),
        "spread_ms": (max(g["t0"] for g in got) - t0) * 1000,
    }


def test_tunnel_parallel(benchmark, impl, keys, tmp_path):
    """8 bulk connections at once in one multi-mode session (SMB multichannel-like), AEAD,
    against the same 8 through one ``ssh -L`` (aes128-gcm); aggregate GB/s, the path's CPU
    per GB (client end + relay + daemon end against ssh + sshd) and stream fairness."""
    ka, kb = keys("@bench_a"), keys("@bench_b")
    res: dict[str, list[dict[str, float]]] = {"tunnel": [], "ssh": []}
    cpu: dict[str, list[float]] = {"tunnel": [], "ssh": []}
    gb = PAR_BULK / GB
    with contextlib.ExitStack() as stack:
        sshd = start_sshd(tmp_path / "sshd")
        stack.callback(sshd.close)
        relay = stack.enter_context(RelayProc(impl))
        service = stack.enter_context(Proc(["service"], name="service"))
        sport = service.recv(30)["port"]
        senders = [
            stack.enter_context(Proc(["sender"], name=f"sender {i}")) for i in range(PAR_STREAMS)
        ]
        (sess,), _ = relay.sessions(1, ka, kb, "par")
        ends = stack.enter_context(MultiEnds(sess, AeadKeys.generate(sess.sid), impl, sport))

        def run():
            for _ in range(PAR_ROUNDS):
                with SshForward(sshd, sport, SSH_CIPHERS[0]) as fwd:
                    sshd0 = tree_cpu(sshd.proc.pid)
                    res["ssh"].append(_parallel(senders, service, fwd.port, PAR_BULK))
                    sshd_cpu = tree_cpu(sshd.proc.pid) - sshd0
                    ssh_cpu = fwd.stop()
                if ssh_cpu is not None:
                    cpu["ssh"].append((ssh_cpu + sshd_cpu) / gb)
                c0, d0 = ends.cpu()
                r0 = relay.stats()["cpu"]
                res["tunnel"].append(_parallel(senders, service, ends.port, PAR_BULK))
                c1, d1 = ends.cpu()
                r1 = relay.stats()["cpu"]
                cpu["tunnel"].append((c1["cpu"] - c0["cpu"] + d1["cpu"] - d0["cpu"] + r1 - r0) / gb)
                assert c1["failed"] == 0 and d1["failed"] == 0, (c1, d1)

        benchmark.pedantic(run, rounds=1, iterations=1)
        relay.close_sessions()
    med = {k: statistics.median(r["gbps"] for r in v) for k, v in res.items()}
    fair = {k: statistics.median(r["fair"] for r in v) for k, v in res.items()}
    spread = {k: statistics.median(r["spread_ms"] for r in v) for k, v in res.items()}
    scen = f"parallel bulk, {PAR_STREAMS} streams, 1 session"
    record(
        benchmark,
        scenario=scen,
        metric="aggregate GB/s, AEAD",
        value=med["tunnel"],
        unit="GB/s",
        baseline="ssh -L aes128-gcm",
        baseline_value=med["ssh"],
        target=">= 1.25x",
        rounds=res,
        load=load_average(),
    )
    record(
        benchmark,
        scenario=scen,
        metric="path CPU s/GB (ends + relay)",
        value=statistics.median(cpu["tunnel"]),
        unit="s/GB",
        baseline="ssh + sshd (aes128-gcm)" if cpu["ssh"] else None,
        baseline_value=statistics.median(cpu["ssh"]) if cpu["ssh"] else None,
        target="<= 1x",
        higher_is_better=False,
        cpu=cpu,
    )
    record(
        benchmark,
        scenario=scen,
        metric="slowest / fastest stream",
        value=fair["tunnel"],
        unit="",
        baseline="ssh -L",
        baseline_value=fair["ssh"],
    )
    # wall times (shown, not judged by --check: a ratio of two few-ms figures is noise)
    for who, name in (("tunnel", "AEAD"), ("ssh", "ssh -L")):
        record(
            benchmark,
            scenario=scen,
            metric=f"last stream starts after the first, {name}",
            value=spread[who],
            unit="ms",
            higher_is_better=False,
        )
