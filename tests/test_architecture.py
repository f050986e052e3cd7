"""The package's shape, enforced: layers import only downwards, no import cycle, no module too long.

Every module under memprof/ is parsed with `ast`, function-local imports included (they hide a cycle
as well as a top-level one does). The layers, lowest first, are README's "Architecture" section.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "memprof"
MAX_LINES = 600
# No module may pass MAX_LINES; a module that must is split by concern.
OVERSIZE_TO_SPLIT: dict[str, int] = {}

# Lowest first. A module belongs to the last (highest) layer with a prefix it matches; it may import
# from its own layer and below. Within a layer the cycle check keeps imports one-way.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundation",
        ("memprof.errors", "memprof.io", "memprof.libraries", "memprof.options", "memprof.units", "memprof.version"),
    ),
    ("data", ("memprof.catalog",)),
    (
        "knowledge",
        (
            "memprof.models",
            "memprof.inventory",
            "memprof.settings",
            "memprof.predict",
            "memprof.tensors",
            "memprof.kvcache",
            "memprof.quant",
        ),
    ),
    ("lora", ("memprof.lora",)),  # options shared by every command, and counting
    ("step", ("memprof.step",)),
    ("measure", ("memprof.measure",)),
    ("simulate", ("memprof.simulate",)),
    ("results", ("memprof.results",)),
    (
        "analyses",
        (
            "memprof.analyses",
            "memprof.analyses.footprint",
            "memprof.analyses.lora_params",
            "memprof.analyses.profile",
            "memprof.analyses.plan",
            "memprof.analyses.validate",
            "memprof.analyses.compare",
            "memprof.analyses.serve",
        ),
    ),
    ("report", ("memprof.report",)),
    ("commands", ("memprof.commands",)),
    # entry points: the CLI, the public API (the package itself), the pytest plugin and its library,
    # and the maintainers' `python -m memprof.catalog.regenerate`, which builds the data below it
    (
        "entry points",
        (
            "memprof",
            "memprof.cli",
            "memprof.__main__",
            "memprof.testing",
            "memprof.pytest_plugin",
            "memprof.catalog.regenerate",
        ),
    ),
)
# Analyses never reach into each other; validate runs plan's and profile's public entry points.
# serve plans the prefill chunk with plan() and leaves plan's tight-fit margin free (margin_bytes).
ALLOWED_BETWEEN_ANALYSES = {
    ("memprof.analyses.validate", "memprof.analyses.plan"),
    ("memprof.analyses.validate", "memprof.analyses.profile"),
    ("memprof.analyses.serve", "memprof.analyses.plan"),
}
ANALYSES = set(LAYERS[[name for name, _ in LAYERS].index("analyses")][1]) - {"memprof.analyses"}


def analysis_of(module: str) -> str | None:
    """The analysis a module belongs to (a package's submodules belong to it), None outside them."""
    return next((a for a in ANALYSES if module == a or module.startswith(a + ".")), None)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _owner(name: str, modules) -> str:
    """The module an imported name lives in: `memprof.units` for `memprof.units.gib`."""
    while name not in modules:
        name = name.rpartition(".")[0]
    return name


def imports_of(module: str, source: str, modules=MODULES) -> set[tuple[str, tuple[str, ...]]]:
    """(imported memprof module, names taken from it) for every import statement, at any depth."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {(_owner(a.name, modules), ()) for a in node.names if a.name.split(".")[0] == "memprof"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "memprof":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in modules:  # `from memprof import catalog`: the submodule
                    found.add((sub, ()))
                else:
                    found.add((_owner(node.module, modules), (alias.name,)))
    found = {(m, names) for m, names in found if m != module}
    return found


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = rank, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in tests/test_architecture.py"
    return best


def _allowed_between_analyses(module: str, target: str, names: tuple[str, ...]) -> bool:
    public = bool(names) and not any(n.startswith("_") for n in names)
    return (analysis_of(module), target) in ALLOWED_BETWEEN_ANALYSES and public


def layering_errors(modules: dict[str, str]) -> list[str]:
    """Every import that goes up a layer, or from one analysis into another's internals."""
    errors = set()
    for module, source in modules.items():
        for target, names in sorted(imports_of(module, source, modules)):
            here, there = layer_of(module), layer_of(target)
            if there > here:
                errors.add(f"{module} ({LAYERS[here][0]}) imports {target} ({LAYERS[there][0]})")
            elif (
                analysis_of(module)
                and analysis_of(target)
                and analysis_of(module) != analysis_of(target)
                and not _allowed_between_analyses(module, target, names)
            ):
                errors.add(f"analysis {module} imports analysis {target} {names or ''}")
    return sorted(errors)


def import_cycles(modules: dict[str, str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), as sorted lists."""
    graph = {m: sorted({t for t, _ in imports_of(m, s, modules)}) for m, s in modules.items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


SOURCES = {m: p.read_text(encoding="utf-8") for m, p in MODULES.items()}


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_from_a_higher_layer():
    assert layering_errors(SOURCES) == []


def test_no_import_cycle():
    assert import_cycles(SOURCES) == []


def test_no_module_is_over_600_lines():
    lines = {m: len(s.splitlines()) for m, s in SOURCES.items()}
    too_long = {m: n for m, n in lines.items() if n > OVERSIZE_TO_SPLIT.get(m, MAX_LINES)}
    assert too_long == {}


@pytest.mark.parametrize(
    "module, source",
    [
        # a function-local upward import: what hid the profile <-> validate circle
        ("memprof.results.profile", "def f():\n    from memprof.analyses.profile import profile\n"),
        ("memprof.catalog", "import memprof.cli\n"),
        ("memprof.analyses.plan", "from memprof.analyses.profile import _check_options\n"),
    ],
)
def test_the_checks_catch_a_wrong_import(module, source):
    assert layering_errors({**SOURCES, module: SOURCES[module] + source})


def test_the_cycle_check_catches_a_cycle():
    broken = {**SOURCES, "memprof.errors": SOURCES["memprof.errors"] + "\nimport memprof.options\n"}
    assert import_cycles(broken) == [["memprof.errors", "memprof.options"]]


def test_the_readme_tree_names_every_module():
    """README's Architecture tree has a line for every module and package: a newcomer sees the
    whole package there, and a module added without a line fails here."""
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    tree = readme[readme.index("## Architecture") :]
    tree = tree[tree.index("```") + 3 :]
    tree = tree[: tree.index("```")]
    words = set(re.findall(r"[\w.]+\.py|\w+/", tree))
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        package = path.name == "__init__.py" and rel.parent != Path(".")
        name = f"{rel.parent.name}/" if package else path.name
        if name not in words and not any(part.startswith(".") for part in rel.parts):
            missing.append(str(rel))
    assert missing == []
