"""The house rules, read from the source: imports go down the layers, no cycle, small files and
functions, and docs/architecture.md drawn from the current graph."""

import ast

import pytest

from tests import import_graph as G

MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


@pytest.fixture(scope="module")
def imports():
    return G.all_imports()


def test_lipden_imports_only_go_down_the_layers(imports):
    upward = []
    for record in imports:
        source, target = G.layer_of(record.importer), G.layer_of(record.imported)
        if source is None or target is None:
            continue
        siblings = {G.subpackage(record.importer), G.subpackage(record.imported)} == set(G.SIBLINGS)
        if target > source or siblings:
            upward.append(f"{record.importer}:{record.line} imports {record.imported}")
    assert not upward, "\n".join(upward)


def test_only_the_cli_imports_problems_and_benchmarks_and_only_when_a_command_runs(imports):
    wrong = [
        f"{r.importer}:{r.line} imports {r.imported}"
        for r in imports
        if r.importer.startswith("lipden") and r.imported.split(".")[0] in ("problems", "benchmarks")
        and (G.layer_of(r.importer) != len(G.LAYERS) - 1 or r.top_level)
    ]
    assert not wrong, "\n".join(wrong)


def test_problems_use_only_lipden_io(imports):
    wrong = [f"{r.importer}:{r.line} imports {r.imported}" for r in imports
             if r.importer.startswith("problems") and r.imported.startswith("lipden")
             and r.imported not in ("lipden.io", "lipden.paths")]
    assert not wrong, "\n".join(wrong)


def test_benchmarks_and_problems_use_public_names_only(imports):
    private = [
        f"{r.importer}:{r.line} imports {r.imported} {', '.join(r.names)}"
        for r in imports
        if r.importer.split(".")[0] in ("benchmarks", "problems") and r.imported.startswith("lipden")
        and (any(part.startswith("_") for part in r.imported.split("."))
             or any(name.startswith("_") for name in r.names))
    ]
    assert not private, "\n".join(private)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The cycles found by a depth-first search (one per back edge)."""
    found, state, path = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_no_import_cycle_between_lipden_modules(imports):
    """Any import counts, also one inside a function: a cycle there is a cycle of concepts."""
    modules = {G.module_name(p) for p in G.source_files()}
    edges: dict[str, set[str]] = {}
    for record in imports:
        if record.importer == "lipden" or not record.importer.startswith("lipden"):
            continue  # the package's lazy re-exports sit above everything
        targets = [record.imported]
        targets += [f"{record.imported}.{name}" for name in record.names]  # from lipden.nn import splines
        for target in targets:
            if target in modules and target != record.importer and target != "lipden":
                edges.setdefault(record.importer, set()).add(target)
    assert not _cycles(edges), _cycles(edges)


def test_the_cycle_search_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": {"c"}}) == []


def test_no_file_over_400_lines_and_no_function_over_80():
    too_long = []
    for path in G.source_files():
        text = path.read_text()
        name = path.relative_to(G.ROOT)
        if text.count("\n") > MAX_FILE_LINES:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)


def test_architecture_page_is_current():
    assert G.PAGE.read_text() == G.render(), "run: python -m tests.import_graph"
