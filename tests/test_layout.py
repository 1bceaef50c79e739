"""The shape of the code (docs/layout.md): layers that only import downwards, no import circles,
`jobs/` as five rooms and its entry points, and modules and functions small enough to read at a
glance."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Lowest first. A module may import modules of its own layer (without a circle) or below.
LAYERS = [
    # the base: typed values, configs, files, seeds, cosines
    ["e2e.typed", "e2e.io", "e2e.rng", "e2e.optim", "e2e.config_methods",
     "e2e.arch.config", "e2e.config", "e2e.store"],
    # the math of one dictionary and the model around it; data; analyses; the small LM
    ["e2e.kernels", "e2e.losses", "e2e.dictionary", "e2e.model", "e2e.sae", "e2e.arch",
     "e2e.metrics", "e2e.ksvd",
     "e2e.ksvd.pursuit", "e2e.ksvd.update", "e2e.ksvd.dictionary", "e2e.data",
     "e2e.analysis", "e2e.lm", "e2e.autointerp", "e2e.evals"],
    # what every kind of cell shares: dictionaries on disk, the source and its evaluation
    ["e2e.saelens", "e2e.data.source"],
    # the fitting routines
    ["e2e.train", "e2e.ksvd.fit"],
    # jobs: the parser of every command line (no room)
    ["jobs.cli"],
    # jobs: the rooms, one layer each, lowest first (docs/layout.md draws them)
    *[[f"jobs.{room}"] for room in ("plan", "report", "analysis", "explain", "run")],
    # jobs: the entry points on top
    ["jobs.submit", "jobs.stage", "jobs.collect", "jobs.analyze", "jobs.autointerp", "jobs.cell",
     "jobs.evaluate"],
]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ("e2e", "jobs"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if name not in ("e2e", "jobs"):  # the roots hold no code
                out[name] = path
    return out


def _layer(name: str) -> int:
    """The layer of a module: its own entry, else its package's (longest match)."""
    best = None
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            if name == entry or name.startswith(entry + "."):
                if best is None or len(entry) > len(best[1]):
                    best = (i, entry)
    if best is None:
        raise AssertionError(f"{name} is in no layer of tests/test_layout.py")
    return best[0]


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, anywhere in the file (lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import x` runs pkg's __init__ first, then imports x if it is a module
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if n in modules:
                out.add(n)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_every_import_goes_down_or_sideways():
    bad = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
           for a, deps in _graph().items() for b in deps if _layer(b) > _layer(a)]
    assert not bad, "\n".join(bad)


ROOMS = ("plan", "report", "analysis", "explain", "run")
ENTRY_POINTS = ("submit", "stage", "collect", "analyze", "autointerp", "cell", "evaluate")


def test_jobs_holds_its_rooms_and_entry_points_and_nothing_else():
    jobs = REPO / "jobs"
    top = {p.stem for p in jobs.glob("*.py")} - {"__init__", "cli"}
    assert top == set(ENTRY_POINTS), "jobs/ holds the entry points; the rest lives in a room"
    rooms = {p.name for p in jobs.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert rooms == set(ROOMS)
    for room in ROOMS:  # each says what it holds and what it may import, and holds no code
        tree = ast.parse((jobs / room / "__init__.py").read_text())
        assert ast.get_docstring(tree) and len(tree.body) == 1, room


def test_the_docs_draw_the_rooms_in_the_tests_order():
    layout = (REPO / "docs" / "layout.md").read_text()
    assert " -> ".join(f"`{r}`" for r in ROOMS) in layout


def test_the_library_never_imports_jobs():
    bad = [f"{a} imports {b}" for a, deps in _graph().items() if a.startswith("e2e")
           for b in deps if b.startswith("jobs")]
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    edges = _graph()  # a package's __init__ importing its submodules counts, too
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        path.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(m):] + [m]))
            if m not in state:
                visit(m)
        path.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_the_core_stays_small():
    core = sorted((REPO / "e2e").glob("*.py"))
    total = sum(_lines(p) for p in core)
    assert total <= 1500, f"e2e/'s own modules hold {total} lines (subpackages apart)"


@pytest.mark.parametrize("pkg", ["e2e", "jobs"])
def test_no_module_or_function_is_too_long(pkg):
    long_modules, long_functions = [], []
    for path in sorted((REPO / pkg).rglob("*.py")):
        if _lines(path) > 350:
            long_modules.append(f"{path.relative_to(REPO)}: {_lines(path)} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long_functions.append(f"{path.relative_to(REPO)}:{node.lineno} "
                                          f"{node.name}: {n} lines")
    assert not long_modules and not long_functions, "\n".join(long_modules + long_functions)


def test_the_container_wrapper_needs_only_the_standard_library():
    """slurm/array.sbatch runs `python3 -m jobs.plan.containers` on the node's plain python3."""
    import subprocess
    import sys

    blocked = ("torch", "numpy", "fire", "transformers", "h5py", "submitit", "safetensors")
    code = ("import runpy, sys\n"
            f"for m in {blocked!r}: sys.modules[m] = None\n"
            "sys.argv = ['x', 'container=podman', 'image=img', 'root=/shared', 'gpus=1']\n"
            "runpy.run_module('jobs.plan.containers', run_name='__main__', alter_sys=True)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "podman run" in r.stdout, r.stderr
