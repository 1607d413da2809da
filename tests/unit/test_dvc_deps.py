"""dvc.yaml's deps cover each stage's code: the modules of the repo its command imports, transitively (module- and
function-level imports, read with ast), must each be a dep or lie in a dep folder. A stage whose code is not among
its deps would not rerun when that code changes (issue 13: evaluate did not depend on retrieval.py)."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

PACKAGES = ("components", "flows")


def _module_file(name: str) -> Path | None:
    """The repo file of module `name` (a package's __init__.py), None outside the repo's packages."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, less what sits under `if TYPE_CHECKING:` (never imported at run time)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                todo.extend(child.orelse)
                continue
            todo.append(child)
    return out


def _imports(nodes: list[ast.AST], module: str, is_package: bool) -> set[str]:
    """The repo modules these nodes import (`from a import b` counts a.b when b is a module)."""
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                parts = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    # importing a.b.c runs a/__init__.py and a/b/__init__.py too
    return {".".join(m.split(".")[: i + 1]) for m in found for i in range(m.count(".") + 1)}


def _closure(roots: set[str], skip: frozenset[str] = frozenset({"flows.cli"})) -> set[Path]:
    """The files of the repo modules `roots` import, transitively; every import in a module counts (a function's
    import runs when that function does, and which functions a command reaches is not worth guessing)."""
    seen: set[Path] = set()
    todo = [m for m in roots if _module_file(m)]
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if path is None or path in seen or name in skip:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(), str(path))
        todo.extend(_imports(_runtime_nodes(tree), name, path.name == "__init__.py") - {name})
    return {p for p in seen if p.name != "__init__.py" or p.read_text().strip()}


def _command_roots(subcommand: str) -> set[str]:
    """What `ragloop SUBCOMMAND` imports: flows/cli.py's module-level imports, those inside the command's function
    and the cli.py helpers it calls, main()'s, and the Prefect connection's for a command that runs a flow."""
    from flows import cli

    source = (REPO / "flows" / "cli.py").read_text()
    tree = ast.parse(source)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    callbacks = {(c.name or (c.callback.__name__.replace("_", "-") if c.callback else "")):
                 getattr(c.callback, "__wrapped__", c.callback) for c in cli.app.registered_commands}  # fmt: skip
    assert subcommand in callbacks, f"dvc.yaml runs `ragloop {subcommand}`, which flows/cli.py does not define"
    start = callbacks[subcommand].__name__
    reached, todo = set(), [start, "main", "optional_rollback_value"]
    todo += ["_on_prefect_api"] if subcommand in cli._RUNS_A_FLOW else []
    while todo:
        name = todo.pop()
        if name in reached or name not in functions:
            continue
        reached.add(name)
        # the helpers it calls (private: a command never calls another command, and a name such as `rollback`
        # inside a helper is an imported function, not the command of that name)
        todo += [n.id for n in ast.walk(functions[name]) if isinstance(n, ast.Name) and n.id.startswith("_")]
    module_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    nodes = module_level + [n for f in reached for n in _runtime_nodes(functions[f])]
    return _imports(nodes, "flows.cli", False) - {"flows.cli"}


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


def stage_code(stage: dict) -> set[Path]:
    argv = shlex.split(stage["cmd"])
    assert argv[0] == "ragloop", f"a stage runs {argv[0]!r}; this test reads `ragloop` commands only"
    return _closure(_command_roots(argv[1])) | {REPO / "flows" / "cli.py"}  # cli.py's other commands do not count


@pytest.mark.parametrize("name", sorted(_stages()))
def test_every_module_a_stage_runs_is_among_its_deps(name: str) -> None:
    stage = _stages()[name]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
    missing = sorted(p.relative_to(REPO).as_posix() for p in stage_code(stage) if not _covered(p, deps))
    assert not missing, f"dvc.yaml stage {name!r} runs code that is not among its deps: {', '.join(missing)}"


def test_a_stage_without_its_retrieval_code_is_caught() -> None:
    stage = _stages()["evaluate"]
    deps = [d for d in stage["deps"] if d != "components/knowledge"]
    missing = {p.relative_to(REPO).as_posix() for p in stage_code(stage) if not _covered(p, deps)}
    assert "components/knowledge/retrieval.py" in missing and "components/behaviour/evaluate.py" not in missing


def test_the_closure_follows_function_level_imports_and_skips_type_checking_ones() -> None:
    code = {p.relative_to(REPO).as_posix() for p in stage_code(_stages()["evaluate"])}
    # imported inside functions only: the evaluate flow's retriever, the registry, the fingerprint's suite hash
    assert {"components/knowledge/retrieval.py", "components/tracking/registry.py", "flows/behaviour.py",
            "components/behaviour/suite.py", "components/config.py", "flows/cli.py"} <= code  # fmt: skip
    assert not any(p.startswith("flows/api") or p.endswith("triage.py") for p in code)  # other commands' code
    base = {p.relative_to(REPO).as_posix() for p in stage_code(_stages()["base_model"])}
    assert "components/behaviour/base_model.py" in base and "flows/behaviour.py" not in base


def test_base_model_does_not_depend_on_the_corpus() -> None:
    """Documented in dvc.yaml: editing a document must re-index, never rebuild the base model under the champion's
    adapter (`dvc repro -f base_model` rebuilds it)."""
    deps = [d if isinstance(d, str) else next(iter(d)) for d in _stages()["base_model"]["deps"]]
    assert not any(d.rstrip("/") == "data/docs" or d.startswith("data/docs/") for d in deps)
