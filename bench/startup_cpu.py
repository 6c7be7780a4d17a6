"""Start-up CPU of npt and sshnp (imports and flag parsing), this checkout against another,
interleaved (issue 11, target 4).

    python bench/startup_cpu.py REF_CHECKOUT [--runs 15]

``REF_CHECKOUT`` is another source tree (``git worktree add`` or ``git archive`` of an older
revision; its ``_speedups`` built or copied). Each round starts, for each program and each
checkout (alternating which goes first), ``python -S -c <start path>`` with
``PYTHONPATH=<checkout>:<site-packages>`` in an empty directory: what ``main`` imports and
parses before the session runs (``--require-aead``, so no RSA key is generated on another
thread); then ``python -S -c pass``. The figure is the child's user + system CPU time from
``os.wait4`` (CPU time, unlike wall time, stays comparable on a shared machine). Both trees
are byte-compiled first: with ``PYTHONDONTWRITEBYTECODE`` set, a tree without ``.pyc`` files
would compile every module at every start. Prints medians and minima in ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile

NPT = """\
import gc
from noports.crypto import ephemeral
gc.disable()
from noports.cli.npt import parse
a = parse(['-f', '@a', '-t', '@b', '-r', '@c', '-d', 'dev', '-p', '22', '--require-aead', '-q'])
import signal
from noports import _compat
from noports.npt.run import log, run
from noports.cli.detach import run_detached
gc.enable()
"""
SSHNP = """\
from noports.crypto import ephemeral
from noports import _compat
from noports.errors import NoPortsError
from noports.log import setup_logging
from noports.sshnp import args
from noports.cli.common import fail
from noports.cli.detach import run_detached
from noports.cli.sshnp import parse
a = parse(['-f', '@a', '-t', '@b', '-r', '@c', '-d', 'dev', '--require-aead', '-q'])
from noports.sshnp import run
"""
SITE = sysconfig.get_paths()["purelib"]


def cpu_ms(checkout: str | None, code: str, home: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOPORTS_")}
    env.update(HOME=home, PYTHONPATH=f"{checkout}{os.pathsep}{SITE}" if checkout else SITE)
    p = subprocess.Popen(
        [sys.executable, "-S", "-c", code],
        env=env,
        cwd=home,  # not a checkout: -c puts the working directory first on sys.path
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert p.stderr is not None
    err = p.stderr.read()
    p.stderr.close()
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"{checkout}: start path failed:\n{err.decode()[-2000:]}")
    return (ru.ru_utime + ru.ru_stime) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ref", help="the other checkout (source tree with noports/)")
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args(argv)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"this": here, "ref": os.path.abspath(args.ref)}
    home = tempfile.mkdtemp(prefix="startup-cpu-")
    for tree in trees.values():
        subprocess.run([sys.executable, "-m", "compileall", "-q", f"{tree}/noports"], check=True)
        env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{SITE}"}
        where = subprocess.run(
            [sys.executable, "-S", "-c", "import noports; print(noports.__file__)"],
            env=env, cwd=home, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert where.startswith(tree), (tree, where)  # the tree measured is the tree named
    res: dict[str, list[float]] = {}
    load0 = os.getloadavg()[0]
    for i in range(args.runs):
        order = list(trees.items()) if i % 2 == 0 else list(trees.items())[::-1]
        for prog, code in (("npt", NPT), ("sshnp", SSHNP)):
            for name, tree in order:
                res.setdefault(f"{prog} ({name})", []).append(cpu_ms(tree, code, home))
        res.setdefault("python -S -c pass", []).append(cpu_ms(None, "pass", home))
    print(f"{args.runs} interleaved runs; load average {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    for k, v in res.items():
        print(f"{k:20s} median {statistics.median(v):6.1f} ms   min {min(v):6.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
