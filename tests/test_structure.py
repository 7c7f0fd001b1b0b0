"""The package's structure: layers that import one way, no import circles, no imports of
another module's private names (measured on the source, as text)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "bayesfluo"

# lower layers first; a module may import its own layer and the layers below it
LAYERS = [
    ("base", ["bayesfluo._version", "bayesfluo.instruments", "bayesfluo.data",
              "bayesfluo.io.atomic"]),
    ("physics", ["bayesfluo.physics"]),
    ("model", ["bayesfluo.model"]),
    ("scene", ["bayesfluo.scene"]),
    ("inference", ["bayesfluo.inference"]),
    ("retrieval", ["bayesfluo.retrieval"]),
    ("diagnostics", ["bayesfluo.diagnostics"]),
    ("top", ["bayesfluo.report", "bayesfluo.cli", "bayesfluo.demo", "bayesfluo.shipped",
             "bayesfluo.__init__"]),
]
# io is used by retrieval, cli and report (and reads tables for the model's sources)
IO = "bayesfluo.io"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """(module, imported names, at module level) of each bayesfluo import in a file."""
    tree = ast.parse(path.read_text())
    top = set(id(n) for n in tree.body)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "bayesfluo"):
            out.append((node.module, [a.name for a in node.names], id(node) in top))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("bayesfluo"):
                    out.append((a.name, [], id(node) in top))
    return out


def _resolve(mod: str, name: str, modules: dict) -> str:
    """The module an imported name lives in (a submodule where ``name`` is one)."""
    return f"{mod}.{name}" if f"{mod}.{name}" in modules else mod


def _layer(mod: str) -> int | None:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(mod == p or mod.startswith(p + ".") for p in prefixes):
            return i
    return None


def private_imports() -> list[str]:
    """Imports of another module's private names."""
    bad = []
    for mod, path in _modules().items():
        for src, names, _ in _imports(path):
            for n in names:
                if n.startswith("_") and n != "__version__" and src != mod:
                    bad.append(f"{mod} imports {src}.{n}")
    return bad


def test_no_private_names_imported_across_modules():
    assert private_imports() == []


def layer_violations() -> list[str]:
    """Imports that run against the layers."""
    modules = _modules()
    bad = []
    for mod, path in modules.items():
        lm = _layer(mod)
        for src, names, _ in _imports(path):
            for target in {_resolve(src, n, modules) for n in names} or {src}:
                if (target == IO or target.startswith(IO + ".")) and _layer(target) is None:
                    if lm is not None and lm < _layer("bayesfluo.retrieval") and not (
                            mod.startswith(IO)):
                        bad.append(f"{mod} (layer {LAYERS[lm][0]}) imports {target}")
                    continue
                lt = _layer(target)
                if mod.startswith(IO) and _layer(mod) is None:
                    # io may use the physics and the base layer only
                    if lt is not None and lt > _layer("bayesfluo.physics"):
                        bad.append(f"{mod} (io) imports {target}")
                    continue
                if lm is not None and lt is not None and lt > lm:
                    bad.append(f"{mod} (layer {LAYERS[lm][0]}) imports {target} "
                               f"(layer {LAYERS[lt][0]})")
    return bad


def test_layers_import_one_way():
    assert layer_violations() == []


def import_cycles() -> list[list[str]]:
    """Circles in the graph of module imports (at any level of the module)."""
    modules = _modules()
    graph = {m: set() for m in modules}
    for mod, path in modules.items():
        for src, names, _ in _imports(path):
            for t in {_resolve(src, n, modules) for n in names} or {src}:
                if t in modules and t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)
    # a package's __init__ re-exporting its submodules is not a circle with them
    for mod in graph:
        graph[mod] = {t for t in graph[mod] if not t.startswith(mod + ".")}
    cycles, state = [], {}

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for t in sorted(graph[n]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    return cycles


def test_no_import_circles():
    assert import_cycles() == []


@pytest.mark.parametrize("name", ["model.py", "models.py", "patches.py", "guide.py",
                                  "nuts.py", "retrieve.py"])
def test_no_top_level_inference_modules(name):
    """Each part lives in its layer's folder, none on the package's top level."""
    assert not (PKG / name).exists()


if __name__ == "__main__":  # python tests/test_structure.py: the lists the tests check
    for f in (private_imports, layer_violations, import_cycles):
        found = f()
        print(f"{f.__name__}: {len(found)}")
        for row in found:
            print("   ", row)
