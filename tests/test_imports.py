"""The layout holds: every module imports (no import circle), `common/` never imports `client/`,
`server/` or `fedtune/`, and every test that starts a real federation is marked slow."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "client", "server", "fedtune")
# what starts a real federation (Flower processes): the harness's starters and the shared run
# of tests/test_export_predict.py. bench/inproc.py's in-process federation is fast on purpose.
FEDERATION = {"tests.simhelp": {"simulate", "run_simulate", "start", "Federation"},
              "tests.test_export_predict": {"shared_run", "copy_run"}}


def _modules() -> list[str]:
    names = []
    for pkg in PACKAGES:
        names.append(pkg)
        names += [m.name for m in pkgutil.walk_packages([str(ROOT / pkg)], prefix=f"{pkg}.")]
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_every_module_imports(name):
    """Each module imports on its own (an import circle would fail one of them)."""
    pytest.importorskip(name) if name.endswith(("explain", "tune")) else importlib.import_module(name)


def _module_level_imports(name: str) -> set[str]:
    """Project modules `name` imports when it is loaded (imports inside functions excluded)."""
    path = ROOT / (name.replace(".", "/") + ".py")
    if not path.is_file():
        path = ROOT / name.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    known, out = set(_modules()), set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue  # an import inside a function runs when called, not when the module loads
        todo.extend(ast.iter_child_nodes(node))
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def test_no_import_circle():
    graph = {name: _module_level_imports(name) for name in _modules()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert cycles == []


def _imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


def test_common_imports_no_side():
    bad = {str(p.relative_to(ROOT)): sorted(_imported(p) & {"client", "server", "fedtune"})
           for p in (ROOT / "common").rglob("*.py")}
    assert {k: v for k, v in bad.items() if v} == {}


def _slow(decorators: list[ast.expr]) -> bool:
    return any("slow" in ast.unparse(d) for d in decorators)


def _calls(node: ast.AST) -> set[str]:
    """Names called in `node`: `f(...)` gives f, `simhelp.f(...)` gives simhelp.f."""
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            names.add(ast.unparse(sub.func))
    return names


def _starters(tree: ast.Module) -> set[str]:
    """The names under which this test module can start a federation."""
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module in FEDERATION:
            out |= {a.asname or a.name for a in node.names if a.name in FEDERATION[node.module]}
        elif isinstance(node, ast.ImportFrom) and node.module == "tests":
            for alias in node.names:
                mod = f"tests.{alias.name}"
                out |= {f"{alias.asname or alias.name}.{f}" for f in FEDERATION.get(mod, ())}
    return out


def test_every_real_federation_is_marked_slow():
    """A test that starts a real federation (itself, through a helper or fixture of its module,
    or the shared simulated run) is marked slow, so `-m "not slow"` stays the fast loop."""
    unmarked = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.Assign) and "pytestmark" in ast.unparse(n.targets[0])
               and "slow" in ast.unparse(n.value) for n in tree.body):
            continue
        funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        starts, changed = _starters(tree), True
        while changed:  # helpers and fixtures of this module that start one, transitively
            changed = False
            for name, fn in funcs.items():
                uses = _calls(fn) | {a.arg for a in fn.args.args if a.arg in funcs}
                if name not in starts and not name.startswith("test_") and uses & starts:
                    starts.add(name)
                    changed = True
        for name, fn in funcs.items():
            uses = _calls(fn) | {a.arg for a in fn.args.args if a.arg in funcs}
            if name.startswith("test_") and uses & starts and not _slow(fn.decorator_list):
                unmarked.append(f"{path.name}::{name}")
    assert unmarked == []


def test_nothing_imports_the_console_script():
    """fedtune/cli.py joins the command modules; none of them (nor anything else) imports it back,
    not even lazily or from a `__main__` block (the old registrars did, in a circle)."""
    back = [str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if p != ROOT / "fedtune" / "cli.py" and "fedtune.cli" in _imported_names(p)]
    assert back == []


def _imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
        {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
