"""The shape of components/ and flows/: packages import one way (the layers below; no cycle, counting imports inside
functions), and only the manifest speaks SQL."""

from __future__ import annotations

import ast
from pathlib import Path

COMPONENTS = Path(__file__).resolve().parents[2] / "components"


def _module_name(path: Path) -> str:
    parts = path.relative_to(COMPONENTS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(COMPONENTS.rglob("*.py"))}


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the components modules it imports, anywhere in the file: a function-level import is still a
    dependency (deferring one is how a cycle hides), so it counts. `if TYPE_CHECKING:` imports count too."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module if node.level == 0 else _relative(name, path, node.module, node.level)
                for alias in node.names:  # `from components.knowledge import indexer` names a module
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _relative(name: str, path: Path, module: str, level: int) -> str:
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    return ".".join([*package[: len(package) - level + 1], module])


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when the graph is acyclic (depth-first, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_the_cycle_finder_finds_a_cycle_and_passes_a_dag() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_function_level_imports_are_edges(tmp_path: Path) -> None:
    pkg = tmp_path / "components"
    (pkg / "knowledge").mkdir(parents=True)
    (pkg / "knowledge" / "a.py").write_text("def f():\n    from components.knowledge.b import g\n")
    (pkg / "knowledge" / "b.py").write_text("from components.knowledge import a\n")
    modules = {
        "components.knowledge.a": pkg / "knowledge" / "a.py",
        "components.knowledge.b": pkg / "knowledge" / "b.py",
    }
    graph = import_graph(modules)
    assert graph["components.knowledge.a"] == {"components.knowledge.b"}  # imported inside a function
    assert graph["components.knowledge.b"] == {"components.knowledge.a"}  # `from package import module`
    assert find_cycle(graph)


def test_components_have_no_import_cycle() -> None:
    graph = import_graph(_modules())
    assert "components.knowledge.indexer" in graph["components.knowledge.maintenance"]  # the graph is real
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


# The layers, lowest first (docs/architecture.md). A module imports only its own package and the layers below:
# the records that cross layers (components/records.py, components/routes.py) live in the lowest. knowledge and
# tracking share a layer and never import each other; flows (Prefect flows, their wiring, the CLI) sits on top.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "components",
        "components.config",
        "components.files",
        "components.hashing",
        "components.jsonl",
        "components.records",
        "components.routes",
    ),
    ("components.knowledge", "components.tracking"),
    ("components.behaviour",),
    ("components.serving",),
    ("flows",),
)


def package_of(module: str) -> str:
    """The layer unit a module belongs to: a subpackage of components (components.knowledge), a base module of
    components (components.config), or flows."""
    parts = module.split(".")
    if parts[0] == "flows":
        return "flows"
    if len(parts) >= 2 and (COMPONENTS / parts[1]).is_dir():
        return ".".join(parts[:2])
    return module


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that runs against the layers: `a -> b` where b's package is in a higher layer, or in the same
    layer but another package (base modules may import each other)."""
    rank = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
    out = []
    for module, targets in sorted(graph.items()):
        src = package_of(module)
        for target in sorted(targets):
            dst = package_of(target)
            if src == dst:
                continue
            if src not in rank or dst not in rank:
                out.append(f"{module} -> {target}: package {src if src not in rank else dst} is in no layer")
            elif rank[dst] > rank[src] or (rank[dst] == rank[src] and rank[src] > 0):
                out.append(f"{module} -> {target}")
    return out


def _repo_modules() -> dict[str, Path]:
    flows = COMPONENTS.parent / "flows"
    return _modules() | {_module_name(p): p for p in sorted(flows.rglob("*.py"))}


def test_the_layer_check_catches_an_upward_and_a_sideways_import() -> None:
    graph = {
        "components.knowledge.indexer": {"components.config", "components.behaviour.suite"},  # upward
        "components.tracking.traces": {"components.knowledge.manifest"},  # sideways, same layer
        "components.behaviour.loop": {"components.knowledge.indexer", "components.routes"},  # downward: fine
        "components.routes": {"components.config"},  # base to base: fine
        "flows.cli": {"components.serving.engine"},
    }
    assert layer_violations(graph) == [
        "components.knowledge.indexer -> components.behaviour.suite",
        "components.tracking.traces -> components.knowledge.manifest",
    ]


def test_packages_import_one_way() -> None:
    graph = import_graph(_repo_modules())
    assert "components.knowledge.indexer" in graph["components.knowledge.maintenance"]  # the graph is real
    assert any(t.startswith("components.") for t in graph["flows.behaviour"])
    violations = layer_violations(graph)
    assert not violations, "imports against the layers (docs/architecture.md):\n" + "\n".join(violations)


def test_only_the_manifest_runs_sql() -> None:
    """The manifest's tables are written through its named methods; any other module executing SQL would be a
    second author of the schema."""
    calls = {"execute", "executemany", "executescript"}
    offenders = [
        f"{path.relative_to(COMPONENTS.parent)}:{node.lineno}"
        for name, path in _modules().items()
        if name != "components.knowledge.manifest"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in calls
    ]
    assert not offenders, f"SQL outside components/knowledge/manifest.py: {offenders}"


def test_the_manifest_file_is_named_in_one_place() -> None:
    """Every reader and writer finds the manifest through knowledge.manifest.manifest_path."""
    roots = [COMPONENTS, COMPONENTS.parent / "flows"]
    named = [
        f"{path.relative_to(COMPONENTS.parent)}:{node.lineno}"
        for root in roots
        for path in sorted(root.rglob("*.py"))
        if path != COMPONENTS / "knowledge" / "manifest.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "manifest.sqlite" in node.value
    ]
    assert not named, f"the manifest's file name outside components/knowledge/manifest.py: {named}"


def _spelled(names: tuple[str, ...], owner: Path, roots: list[Path]) -> list[str]:
    """file:line of each string literal outside `owner` that is one of `names`, or a path ending in one."""
    return [
        f"{path.relative_to(COMPONENTS.parent)}:{node.lineno}: {node.value!r}"
        for root in roots
        for path in sorted(root.rglob("*.py"))
        if path != owner
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and any(node.value == n or node.value.endswith("/" + n) for n in names)
    ]


def test_the_suite_and_metrics_files_are_named_in_one_place() -> None:
    """Every reader and writer of a behaviour suite file or a metrics file joins its folder with a name from
    components/files.py. The retriever pointer (knowledge/retriever_pointer.py, in paths.index) is another file
    that shares the name of a metrics file."""
    from components import files

    names = (*files.SUITE_FILES, *files.METRICS_FILES)
    pointer = "components/knowledge/retriever_pointer.py"
    spelled = [
        s
        for s in _spelled(names, COMPONENTS / "files.py", [COMPONENTS, COMPONENTS.parent / "flows"])
        if not s.startswith(pointer + ":")
    ]
    assert not spelled, "a suite or metrics file named outside components/files.py:\n" + "\n".join(spelled)
    assert _spelled(names, COMPONENTS / "files.py", [COMPONENTS / "knowledge"])  # the check sees the pointer


def test_files_are_hashed_in_one_module() -> None:
    """A file's or folder's digest comes from components/hashing.py: no other module reads a file into hashlib."""
    offenders = [
        f"{path.relative_to(COMPONENTS.parent)}:{node.lineno}"
        for root in (COMPONENTS, COMPONENTS.parent / "flows")
        for path in sorted(root.rglob("*.py"))
        if path != COMPONENTS / "hashing.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "hashlib"
        and (
            node.func.attr == "file_digest"
            or any(isinstance(a, ast.Call) and getattr(a.func, "attr", "") == "read_bytes" for a in node.args)
        )
    ]
    assert not offenders, f"a file hashed outside components/hashing.py: {offenders}"
