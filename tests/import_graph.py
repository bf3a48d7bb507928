"""The import graph of lipden, problems and benchmarks, read from the source with ``ast``.

``python -m tests.import_graph`` rewrites docs/architecture.md (the layers and who imports
whom); tests/test_architecture.py checks the rules and that the page is in sync.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"

#: Layers from the bottom up: a module may import its own layer and the layers below, never
#: above. ``optim`` and ``train`` share a rank but must not import each other.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("lipden.paths", "lipden.io", "lipden.metrics", "lipden.memory")),
    ("nn", ("lipden.nn",)),
    ("certify", ("lipden.certify",)),
    ("models", ("lipden.models",)),
    ("optim, train", ("lipden.optim", "lipden.train")),
    ("cli", ("lipden.cli", "lipden.__main__")),
]
SIBLINGS = ("lipden.optim", "lipden.train")
PACKAGES = ("lipden", "problems", "benchmarks")


@dataclass(frozen=True)
class Import:
    importer: str  # module name, e.g. lipden.optim.reconstruct
    imported: str  # module name, resolved from relative imports
    names: tuple[str, ...]  # names taken with ``from x import a, b`` (empty for ``import x``)
    top_level: bool  # at module level (not inside a function or class body)
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path) -> list[Import]:
    """Every import of the project's own packages in one file, with where it sits."""
    importer = module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level_nodes = {id(node) for node in tree.body}
    for node in tree.body:  # imports inside ``if TYPE_CHECKING:`` count as top level
        if isinstance(node, ast.If):
            top_level_nodes.update(id(child) for child in node.body)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = tuple(alias.name for alias in node.names)
            module = _resolve(importer, path.name == "__init__.py", node)
            targets = [(module, names)]
        else:
            continue
        for module, names in targets:
            if module.split(".")[0] in PACKAGES:
                found.append(Import(importer, module, names, id(node) in top_level_nodes, node.lineno))
    return found


def all_imports() -> list[Import]:
    return [record for path in source_files() for record in imports_of(path)]


def layer_of(module: str) -> int | None:
    """Rank of a lipden module in LAYERS (None for lipden/__init__, problems, benchmarks)."""
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "lipden" and len(parts) > 1 else parts[0]


def render() -> str:
    """docs/architecture.md: the layers, then each subpackage's imports of the others."""
    edges: dict[str, set[str]] = {}
    for record in all_imports():
        source, target = subpackage(record.importer), subpackage(record.imported)
        if source != target and record.importer != "lipden":
            edges.setdefault(source, set()).add(target)
    lines = [
        "# Architecture: the import graph",
        "",
        "Generated from the source by `python -m tests.import_graph`; `tests/test_architecture.py` checks",
        "that it is current, that imports only go down the layers below, and that there is no cycle.",
        "`lipden/__init__.py` re-exports the public names lazily and is left out.",
        "",
        "Layers, from the top (a module imports its own layer and the ones below it only):",
        "",
        "```text",
    ]
    for name, prefixes in reversed(LAYERS):
        lines.append(f"{name:<13} {'  '.join(prefixes)}")
    lines += [
        "```",
        "",
        "`lipden.optim` and `lipden.train` never import each other. Only `lipden.cli` imports",
        "`problems` and `benchmarks`, inside the function that runs a command. `problems` uses",
        "`lipden.io` only; `benchmarks` uses public names only.",
        "",
        "Who imports whom (subpackage level):",
        "",
        "```text",
    ]
    for source in sorted(edges):
        lines.append(f"{source:<18} -> {', '.join(sorted(edges[source]))}")
    lines += ["```", ""]
    return "\n".join(lines)


def main() -> int:
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
