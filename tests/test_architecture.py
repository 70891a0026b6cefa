"""The layout's rules, read from the source (docs/architecture.md states them):

- no import cycle among the project's own modules, counting imports inside functions;
- the money rules (wallet.py), the schemas, the read side and the units (money/) import no web
  framework (Flask, werkzeug, click, gunicorn), nor the web, the CLI or the Flask wiring;
- the store (store/) imports none of that, nor the rules, money/ or the schemas;
- the replication supervisor imports nothing of ours but the replication package.
"""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("store", "money", "web", "cli", "replication", "harness")
FRAMEWORKS = {"flask", "werkzeug", "click", "gunicorn", "jinja2"}


def project_modules():
    """{module name: path} for every module of ours the app, the CLI and gunicorn load."""
    found = {path.stem: path for path in ROOT.glob("*.py") if path.name != "gunicorn.conf.py"}
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports_of(path, modules):
    """Every module a file imports, at any depth (inside functions too): (ours, third-party roots)."""
    ours, others = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            # `from store import schema` imports store.schema when that is a module of ours.
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name not in modules and "." in name:
                name = name.rpartition(".")[0]
            if name in modules:
                ours.add(name)
            else:
                others.add(name.partition(".")[0])
    return ours, others


def graph():
    modules = project_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def cycles(edges):
    """The strongly connected groups of more than one module, or of one that imports itself."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = iter(range(sys.maxsize))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(node):
        index[node] = low[node] = next(counter)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1 or node in edges.get(node, ()):
                found.append(sorted(group))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle_through_several_modules():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_an_import_inside_a_function_counts(tmp_path):
    modules = {"x": None, "y": None, "y.z": None}
    path = tmp_path / "x.py"
    path.write_text("import os\n\ndef f():\n    from y import z\n    import flask\n")
    assert imports_of(path, modules) == ({"y.z"}, {"os", "flask"})


def test_no_module_of_ours_imports_itself_back_round_a_circle():
    edges = {name: ours for name, (ours, _) in graph().items()}
    assert cycles(edges) == []


def _layer(name):
    if name == "wallet" or name == "schemas" or name.startswith("money"):
        return "rules"
    if name.startswith("store"):
        return "store"
    return "edge"


@pytest.mark.parametrize("name", sorted(name for name in project_modules() if _layer(name) != "edge"))
def test_the_rules_and_the_store_know_no_framework_and_nothing_above_them(name):
    ours, others = graph()[name]
    assert not others & FRAMEWORKS, f"{name} imports {sorted(others & FRAMEWORKS)}"
    above = {module for module in ours if _layer(module) == "edge"}
    assert not above, f"{name} imports {sorted(above)} (the web, the CLI or the Flask wiring)"
    if _layer(name) == "store":
        rules = {module for module in ours if _layer(module) == "rules"}
        assert not rules, f"{name} imports {sorted(rules)}: the store knows no rule"


def test_the_replication_supervisor_needs_only_the_standard_library_and_its_package():
    ours, others = graph()["replication.supervisor"]
    assert ours == {"replication"}
    assert others <= set(sys.stdlib_module_names), others - set(sys.stdlib_module_names)
    ours, others = graph()["replication"]
    assert ours == set() and others <= set(sys.stdlib_module_names)
