"""The house's floors, read from the source: which package imports which (every import,
those under TYPE_CHECKING and inside functions too), over every package of the project:
aios/ and the folders pyproject.toml maps under `aios.` (agents/, tools/, sandbox/, cli/,
benchmarks/)."""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import aios

ROOT = Path(aios.__file__).parent
# package -> its folder, as pyproject.toml maps them (aios itself first)
FOLDERS = {name: ROOT.parent / folder for name, folder in tomllib.loads(
    (ROOT.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].items()}


def sources() -> dict[str, Path]:
    """Every module of the project, by its dotted name."""
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


def module_name(path: Path) -> str:
    return next(name for name, p in sources().items() if p == path)


def imports_of(path: Path) -> set[str]:
    """The aios modules a source file names in its imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("aios"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("aios"))
    return found


def package(module: str) -> str:
    """A module's floor: `aios.kernel.handlers` is in `aios.kernel`."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in sources().items():
        here = package(name)
        graph.setdefault(here, set()).update(p for p in map(package, imports_of(path)) if p not in (here, "aios"))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


# the ground floor: errors, limits and settings, which import nothing above them
GROUND = {"aios.errors", "aios.param", "aios.config"}


def test_the_ground_floor_imports_nothing_above_it() -> None:
    above = {(m, i) for m in GROUND for i in imports_of(ROOT / f"{m.split('.')[1]}.py") if i not in GROUND}
    assert above == set()


def test_the_simulator_stands_alone() -> None:
    """aios.hardware is a library the kernel uses, on the ground floor only, never the
    other way up: the journal's export to a trace lives in aios.storage."""
    outside = {(module_name(p), m) for p in (ROOT / "hardware").rglob("*.py")
               for m in imports_of(p) if not m.startswith("aios.hardware") and m not in GROUND}
    assert outside == set()


def module_graph() -> dict[str, set[str]]:
    modules = sources()
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_circle_between_floors() -> None:
    """aios.context and aios.scheduler no longer import each other (the Snapshot type
    lives with the ticket that holds it); the SDK imports nothing of the kernel or its
    managers (the in-process transport lives beside the runners, in aios.process, and the
    process record is a ground type, in aios.syscall)."""
    assert cycles(package_graph()) == []


def test_no_import_circle_between_modules() -> None:
    """Within a floor too: a package's modules do not import their package back (the
    handlers name the kernel by the protocol they use of it; the ticket does not import
    its resource's module; an Engine is one stage, and aios.hardware.cluster.serve runs a
    pipeline)."""
    assert cycles(module_graph()) == []


def test_every_package_is_read() -> None:
    """The mapped folders too (they were left out, and hid a circle: the kernel, the Python
    tools' loader and the process lifecycle's table of built-in agents)."""
    found = sources()
    for name in ("aios.kernel", "aios.tools.entries", "aios.agents.run", "aios.cli.main", "aios.sandbox",
                 "aios.benchmarks.bench_kernel"):
        assert name in found


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
