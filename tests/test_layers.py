"""The import graph obeys the layer rules of ARCHITECTURE.md section 4, and has no cycles.

The graph is built from the source with ``ast``: top-level, in-function and ``TYPE_CHECKING``
imports all count. Rules:

* L0 errors, _compat, log, names, fsutil, config (and the ``noports`` package itself);
  L1 crypto, _speedups; L2 at, atserver, relay, tunnel; L3 session; L4 the applications
  (sshnp, npt, sshnpd, npa, srvd) and quickstart; L5 cli. An import may point down or stay
  in its own unit (package, or top-level module); it may never point up.
* Sideways imports are allowed in L0 and L1 only: at and atserver never import each other,
  applications never import each other.
* The sans-IO modules (``SANS_IO``) import no asyncio, socket, ssl or selectors.
* No import cycle between modules, and none between units.

Today's exceptions are listed in ``ALLOWED_*``. Those lists may only shrink: the test fails
when an entry no longer occurs, so remove it in the commit that removes the violation.

``python tests/test_layers.py`` prints the figures (cycles, allow-list size, longest functions).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "noports"

LAYERS: dict[str, int] = {
    "noports": 0,
    "errors": 0,
    "_compat": 0,
    "log": 0,
    "names": 0,
    "fsutil": 0,
    "config": 0,
    "metrics": 0,
    "sdnotify": 0,
    "record": 0,  # issue 11: plain value classes in place of start-up dataclasses
    "crypto": 1,
    "_speedups": 1,
    "at": 2,
    "atserver": 2,
    "relay": 2,
    "tunnel": 2,
    "session": 3,
    "sshnp": 4,
    "npt": 4,
    "sshnpd": 4,
    "npa": 4,
    "srvd": 4,
    "quickstart": 4,
    "profiles": 4,  # issue 13: desktop-app profiles and the in-process tunnel runner
    "cli": 5,
    "ui": 4.5,  # issue 13: the web app; above profiles (4), below cli (5), which starts it
    "doctor": 4,  # issue 12: the checks shared by `noports doctor` and `sshnpd --doctor`
}
SIDEWAYS_OK = {0, 1}
# Top-level modules that belong to a package-sized unit until they move into it.
UNIT_OF: dict[str, str] = {
    # the npt console script: outside noports/cli only so it skips cli/__init__ (~55 ms)
    "npt_front": "cli",
}

SANS_IO = {
    "noports.at.protocol",
    "noports.at.commands",
    "noports.relay.auth",
    "noports.crypto.records",
    "noports.tunnel.control",
    "noports.session.wire",
    "noports.srvd.requests",
    "noports.srvd.grant",
    "noports.log",
    "noports.names",
    "noports.crypto.sshkey",
    "noports.session.features",
    "noports.session.errors",
    "noports.session.handshake",
    "noports.cli.activate_steps",
    *(
        f"noports.atserver.{p.stem}"
        for p in (SRC / "atserver").glob("*.py")
        if p.stem not in ("__init__", "net", "tls")  # tls builds ssl contexts: I/O by nature
    ),
}
IO_MODULES = {"asyncio", "socket", "ssl", "selectors"}
# Written by a non-editable build (setup.py), imported under ``try``: absent from the tree.
GENERATED = {"noports._build"}

# (importer, imported): today's layer violations. May only shrink.
ALLOWED_EDGES: set[tuple[str, str]] = set()
# (importer, imported module): sans-IO modules that import I/O today. May only shrink.
ALLOWED_IO: set[tuple[str, str]] = set()
# Strongly connected components (module level, then unit level). May only shrink.
ALLOWED_MODULE_CYCLES: set[frozenset[str]] = set()
ALLOWED_UNIT_CYCLES: set[frozenset[str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def unit(mod: str) -> str:
    parts = mod.split(".")
    name = parts[1] if len(parts) > 1 else parts[0]
    return UNIT_OF.get(name, name)


def _imports(mod: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(target, line) for every import in ``path``; targets outside noports are top-level names."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                while name not in modules and "." in name:
                    name = name.rpartition(".")[0]
                yield (name if name in modules else alias.name.split(".")[0]), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod if is_pkg else mod.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target not in modules:
                # A relative import always names a noports module; keep it visible as such.
                yield (target if node.level else target.split(".")[0]), node.lineno
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            yield from ((s, node.lineno) for s in subs)
            if len(subs) < len(node.names):
                yield target, node.lineno


def build_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(internal edges, external top-level imports) per module."""
    modules = all_modules()
    internal: dict[str, set[str]] = {m: set() for m in modules}
    external: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for target, _line in _imports(mod, path, modules):
            if target in modules:
                if target != mod:
                    internal[mod].add(target)
            else:
                external[mod].add(target)
    return internal, external


def sccs(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one member (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.add(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(frozenset(comp))
    return out


def unit_graph(internal: dict[str, set[str]]) -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for mod, targets in internal.items():
        g.setdefault(unit(mod), set())
        for t in targets:
            if unit(t) != unit(mod):
                g[unit(mod)].add(unit(t))
    return g


def layer_violations(internal: dict[str, set[str]]) -> set[tuple[str, str]]:
    bad = set()
    for mod, targets in internal.items():
        for t in targets:
            a, b = unit(mod), unit(t)
            if a == b:
                continue
            la, lb = LAYERS[a], LAYERS[b]
            if lb > la or (lb == la and la not in SIDEWAYS_OK):
                bad.add((mod, t))
    return bad


def io_violations(external: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(m, x) for m in SANS_IO for x in external.get(m, ()) if x in IO_MODULES}


def _check(found: set, allowed: set, what: str) -> None:
    new = found - allowed
    gone = allowed - found
    msgs = []
    if new:
        msgs.append(f"new {what}:\n  " + "\n  ".join(map(_fmt, sorted(new, key=_fmt))))
    if gone:
        msgs.append(
            f"{what} no longer found; remove from the allow-list:\n  "
            + "\n  ".join(map(_fmt, sorted(gone, key=_fmt)))
        )
    assert not msgs, "\n".join(msgs)


def _fmt(x: object) -> str:
    if isinstance(x, frozenset):
        return "{" + ", ".join(sorted(x)) + "}"
    if isinstance(x, tuple):
        return " -> ".join(x)
    return str(x)


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    return build_graph()


def test_every_unit_has_a_layer(graph: tuple[dict[str, set[str]], dict[str, set[str]]]) -> None:
    missing = {unit(m) for m in graph[0]} - set(LAYERS)
    assert not missing, f"place these in LAYERS: {sorted(missing)}"


def test_graph_sees_in_function_and_relative_imports(
    graph: tuple[dict[str, set[str]], dict[str, set[str]]],
) -> None:
    # The builder must see what the rules are about; a blind builder would pass everything.
    internal, external = graph
    assert "noports.errors" in internal["noports.cli.common"]
    assert "asyncio" in external["noports.tunnel.net"]
    assert any(internal[m] for m in internal if m.startswith("noports.atserver."))


def test_relative_imports_resolve() -> None:
    # A relative import that names no module fails only when its line runs (in-function
    # imports), so the graph checks them all: after a move, every one must still resolve.
    modules = all_modules()
    bad = [
        f"{mod}: {target} (line {line})"
        for mod, path in modules.items()
        for target, line in _imports(mod, path, modules)
        if target.startswith("noports.") and target not in modules and target not in GENERATED
    ]
    assert not bad, "\n".join(bad)


def test_layer_rules(graph: tuple[dict[str, set[str]], dict[str, set[str]]]) -> None:
    _check(layer_violations(graph[0]), ALLOWED_EDGES, "imports against the layer rules")


def test_sans_io_modules_import_no_io(
    graph: tuple[dict[str, set[str]], dict[str, set[str]]],
) -> None:
    assert SANS_IO <= set(graph[0]), sorted(SANS_IO - set(graph[0]))
    _check(io_violations(graph[1]), ALLOWED_IO, "I/O imports in sans-IO modules")


def test_no_module_cycles(graph: tuple[dict[str, set[str]], dict[str, set[str]]]) -> None:
    _check(set(sccs(graph[0])), ALLOWED_MODULE_CYCLES, "module import cycles")


def test_no_unit_cycles(graph: tuple[dict[str, set[str]], dict[str, set[str]]]) -> None:
    _check(set(sccs(unit_graph(graph[0]))), ALLOWED_UNIT_CYCLES, "package import cycles")


_IMPORT_EACH = r"""
import importlib, os, sys
sep = sys.argv.index("--")
for name in sys.argv[1:sep]:  # third-party and stdlib only: never a noports module
    try:
        importlib.import_module(name)
    except ImportError:
        pass
assert not any(m == "noports" or m.startswith("noports.") for m in sys.modules)
failed = []
pending = {}
names = sys.argv[sep + 1 :]
jobs = max(2, os.cpu_count() or 2)
def reap():
    pid, status = os.wait()
    name = pending.pop(pid)
    if status:
        failed.append(name)
while names or pending:
    while names and len(pending) < jobs:
        name = names.pop()
        pid = os.fork()
        if pid == 0:
            try:
                importlib.import_module(name)
            except BaseException:
                import traceback
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        pending[pid] = name
    reap()
print("FAILED " + " ".join(sorted(failed)) if failed else "OK")
"""


def _external_modules() -> list[str]:
    """Dotted names of the non-noports modules (and possible submodules) noports imports."""
    out: set[str] = set()
    for path in all_modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
    return sorted(m for m in out if m.split(".")[0] not in ("noports", "__future__"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_every_module_imports_alone_with_warnings_as_errors() -> None:
    # One clean interpreter (no noports module loaded) forks a child per module, so each
    # import starts from an empty noports state, as aiohttp's test_circular_imports does.
    # The parent loads the stdlib and third-party modules noports uses first (under -W error
    # too), so each child pays only for noports itself.
    names = sorted(all_modules())
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", _IMPORT_EACH, *_external_modules(), "--", *names],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stdout + proc.stderr[-4000:]


def _longest_functions(n: int = 5) -> list[tuple[int, str]]:
    out = []
    for path in all_modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                out.append((size, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)[:n]


if __name__ == "__main__":
    internal, external = build_graph()
    mod_cycles = sccs(internal)
    unit_cycles = sccs(unit_graph(internal))
    print(f"modules: {len(internal)}")
    print(f"module cycles: {len(mod_cycles)}")
    for c in mod_cycles:
        print("  ", _fmt(c))
    print(f"unit (package) cycles: {len(unit_cycles)}")
    for c in unit_cycles:
        print("  ", _fmt(c))
    lv, iv = layer_violations(internal), io_violations(external)
    print(f"layer violations: {len(lv)}; sans-IO violations: {len(iv)}")
    for e in sorted(lv):
        print("  ", _fmt(e))
    allowed = len(ALLOWED_EDGES) + len(ALLOWED_IO)
    allowed += len(ALLOWED_MODULE_CYCLES) + len(ALLOWED_UNIT_CYCLES)
    print(f"allow-list entries: {allowed}")
    print("longest functions:")
    for size, where in _longest_functions():
        print(f"   {size:4d} {where}")
