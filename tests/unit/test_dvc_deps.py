"""dvc.yaml's deps are each stage's code, exactly: the modules of the repo its command imports, transitively (module-
and function-level imports, read with ast), must each be a dep or lie in a dep folder, and each dep of code
(components/, flows/) must be code the command runs (a folder: all of it). A stage whose code is not among its deps
would not rerun when that code changes (issue 13: evaluate did not depend on retrieval.py); a stage with a dep it
does not run reruns for nothing (issue 21: an edit to the HTTP app reran evaluate, finetune and gate)."""

from __future__ import annotations

import ast
import shlex
from functools import cache
from pathlib import Path
from typing import Any

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


def _closure(roots: set[str]) -> set[Path]:
    """The files of the repo modules `roots` import, transitively; every import in a module counts (a function's
    import runs when that function does, and which functions a flow reaches is not worth guessing). The CLI's own
    modules are left to `_cli_reach`, which follows them function by function."""
    seen: set[Path] = set()
    todo = [m for m in roots if _module_file(m)]
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if path is None or path in seen or _is_cli(name):
            continue
        seen.add(path)
        nodes = _runtime_nodes(ast.parse(path.read_text(), str(path)))
        todo.extend((_imports(nodes, name, path.name == "__init__.py") | _run_as_scripts(nodes)) - {name})
    return {p for p in seen if p.name != "__init__.py" or p.read_text().strip()}


def _run_as_scripts(nodes: list[ast.AST]) -> set[str]:
    """The repo modules named by a string, as `python -m components.behaviour.finetune_worker` names the fine-tune's
    worker processes: code the stage runs, though no import statement names it."""
    return {n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and n.value.split(".")[0] in PACKAGES and _module_file(n.value) is not None}  # fmt: skip


CLI = "flows.cli"


def _is_cli(module: str) -> bool:
    return module == CLI or module.startswith(CLI + ".")


@cache
def _cli_module(name: str) -> tuple[dict[str, ast.AST], list[ast.AST], dict[str, tuple[str, str]]]:
    """A module of the CLI package: its top-level functions and classes, its module-level imports, and the names it
    imports from other CLI modules (local name -> (module, name))."""
    path = _module_file(name)
    assert path is not None, name
    tree = ast.parse(path.read_text(), str(path))
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    from_cli = {(a.asname or a.name): (n.module, a.name) for n in imports if isinstance(n, ast.ImportFrom)
                and n.module and _is_cli(n.module) for a in n.names}  # fmt: skip
    return defs, imports, from_cli


def _commands() -> dict[str, tuple[Any, type | None]]:
    """`ragloop`'s top-level commands: name -> (the function, unwrapped, and the command class it is registered
    with)."""
    from flows.cli import app

    out = {}
    for c in app.registered_commands:
        function = getattr(c.callback, "__wrapped__", c.callback)
        out[c.name or function.__name__.replace("_", "-")] = (function, c.cls)
    return out


def _cli_reach(subcommand: str) -> tuple[set[Path], set[str]]:
    """What `ragloop SUBCOMMAND` runs of the CLI package: the files of the CLI modules it imports, and the modules
    outside the CLI that the code it reaches imports. Followed function by function from the command (its
    decorators and command class too) and from main(): a name that is a function or class of the same module, or one
    imported from another CLI module, is followed; another command never is (a command never calls one). A reached
    module's module-level imports run, except the package's imports of the area modules: those only register the
    other commands."""
    commands = _commands()
    assert subcommand in commands, f"dvc.yaml runs `ragloop {subcommand}`, which flows/cli does not define"
    function, cls = commands[subcommand]
    others = {f.__name__ for name, (f, _) in commands.items() if name != subcommand}
    todo = [(CLI, "main"), (function.__module__, function.__name__)]
    todo += [(cls.__module__, cls.__name__)] if cls is not None else []
    seen: set[tuple[str, str]] = set()
    modules: set[str] = {CLI}
    nodes: dict[str, list[ast.AST]] = {}
    while todo:
        module, name = todo.pop()
        if (module, name) in seen or not _module_file(module):
            continue
        seen.add((module, name))
        modules.add(module)
        defs, _, from_cli = _cli_module(module)
        if name not in defs or name in others:
            continue
        reached = _runtime_nodes(defs[name])
        nodes.setdefault(module, []).extend(reached)
        for n in reached:
            if isinstance(n, ast.Name) and n.id in defs:
                todo.append((module, n.id))
            elif isinstance(n, ast.Name) and n.id in from_cli:
                todo.append(from_cli[n.id])
            elif isinstance(n, ast.ImportFrom) and n.module and _is_cli(n.module):
                todo += [(n.module, a.name) for a in n.names]
    done: set[str] = set()
    while modules - done:  # a reached module imports its CLI modules at module level: they run too
        module = sorted(modules - done)[0]
        done.add(module)
        _, imports, _ = _cli_module(module)
        nodes.setdefault(module, []).extend(imports)
        for n in imports:
            if not (isinstance(n, ast.ImportFrom) and n.module and _is_cli(n.module)):
                continue
            for alias in n.names:
                submodule = f"{n.module}.{alias.name}"
                if not _module_file(submodule):
                    modules.add(n.module)  # a name from a CLI module
                elif module != CLI:
                    modules.add(submodule)  # a CLI module; the package's own imports of them register commands
    outside = {m for module, found in nodes.items()
               for m in _imports(found, module, module == CLI) if not _is_cli(m)}  # fmt: skip
    return {p for m in modules if (p := _module_file(m)) is not None}, outside


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


def stage_code(stage: dict) -> set[Path]:
    """The files of the repo a stage's command runs: the CLI modules it reaches (its area module, the package's
    __init__, common.py) and everything they import outside the CLI, transitively."""
    argv = shlex.split(stage["cmd"])
    assert argv[0] == "ragloop", f"a stage runs {argv[0]!r}; this test reads `ragloop` commands only"
    cli_files, outside = _cli_reach(argv[1])
    return _closure(outside) | cli_files


def _deps(stage: dict) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]


def not_run(code: set[Path], deps: list[str]) -> list[str]:
    """The deps of code (a file or folder of components/ or flows/) that are not code the stage runs: a file it does
    not import, or a folder with a module it does not import (list that folder's files one by one instead)."""
    out = []
    for dep in deps:
        path = REPO / dep.rstrip("/")
        if dep.split("/")[0] not in PACKAGES:
            continue
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        modules = [f for f in files if f.name != "__init__.py" or f.read_text().strip()]
        if not modules or any(f not in code for f in modules):
            out.append(dep)
    return out


@pytest.mark.parametrize("name", sorted(_stages()))
def test_every_module_a_stage_runs_is_among_its_deps(name: str) -> None:
    stage = _stages()[name]
    missing = sorted(p.relative_to(REPO).as_posix() for p in stage_code(stage) if not _covered(p, _deps(stage)))
    assert not missing, f"dvc.yaml stage {name!r} runs code that is not among its deps: {', '.join(missing)}"


@pytest.mark.parametrize("name", sorted(_stages()))
def test_every_code_dep_of_a_stage_is_code_it_runs(name: str) -> None:
    stage = _stages()[name]
    extra = not_run(stage_code(stage), _deps(stage))
    assert not extra, f"dvc.yaml stage {name!r} lists code its command does not run (it would rerun for nothing): " + (
        ", ".join(extra))  # fmt: skip


def test_a_stage_without_its_retrieval_code_is_caught() -> None:
    stage = _stages()["evaluate"]
    deps = [d for d in _deps(stage) if d != "components/knowledge/retrieval.py"]
    missing = {p.relative_to(REPO).as_posix() for p in stage_code(stage) if not _covered(p, deps)}
    assert missing == {"components/knowledge/retrieval.py"}


def test_a_stage_with_code_it_does_not_run_is_caught() -> None:
    stage = _stages()["evaluate"]
    code = stage_code(stage)
    extra = [
        "components/serving/app.py",
        "flows/cli/triage.py",
        "components/behaviour/triage.py",
        "components/knowledge",
    ]
    assert not_run(code, [*_deps(stage), *extra]) == extra
    assert not_run(code, ["data/behaviour/gate.jsonl", "params.yaml"]) == []  # data and params are not code


def test_the_closure_follows_function_level_imports_and_skips_type_checking_ones() -> None:
    code = {p.relative_to(REPO).as_posix() for p in stage_code(_stages()["evaluate"])}
    # imported inside functions only: the evaluate flow's retriever, the registry, the fingerprint's suite hash, the
    # Prefect connection of a command that runs a flow
    assert {
        "components/knowledge/retrieval.py",
        "components/tracking/registry.py",
        "flows/behaviour.py",
        "components/behaviour/suite.py",
        "components/config.py",
        "flows/prefect_server.py",
        "flows/cli/__init__.py",
        "flows/cli/common.py",
        "flows/cli/behaviour.py",
        "flows/cli/failures.py",
    } <= code
    # other commands' code: their CLI modules, the HTTP app, triage, the re-index flow (the `pipeline` flow's)
    others = ("flows/cli/knowledge.py", "flows/cli/serving.py", "flows/cli/triage.py", "flows/cli/operations.py",
              "flows/cli/retriever.py", "flows/api_deployment.py", "flows/reindex.py", "flows/pipeline.py",
              "components/serving/", "components/behaviour/triage.py", "flows/triage.py")  # fmt: skip
    assert not [p for p in code if p.startswith(others)]
    base = {p.relative_to(REPO).as_posix() for p in stage_code(_stages()["base_model"])}
    assert "components/behaviour/base_model.py" in base and "flows/behaviour.py" not in base
    assert "flows/prefect_server.py" not in base  # base-model runs no flow
    finetune = {p.relative_to(REPO).as_posix() for p in stage_code(_stages()["finetune"])}
    assert "components/behaviour/finetune_worker.py" in finetune  # run as `python -m` on several GPUs
    index = {p.relative_to(REPO).as_posix() for p in stage_code(_stages()["index"])}
    assert {"flows/cli/knowledge.py", "flows/reindex.py", "flows/prefect_server.py"} <= index


def test_base_model_does_not_depend_on_the_corpus() -> None:
    """Documented in dvc.yaml: editing a document must re-index, never rebuild the base model under the champion's
    adapter (`dvc repro -f base_model` rebuilds it)."""
    deps = [d if isinstance(d, str) else next(iter(d)) for d in _stages()["base_model"]["deps"]]
    assert not any(d.rstrip("/") == "data/docs" or d.startswith("data/docs/") for d in deps)
