"""The `ragloop` command line: help everywhere, and the JSON contracts."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.knowledge import OptionalRollback, optional_rollback_value
from tests.helpers import Deployment

runner = CliRunner()
COMMANDS = ["index", "query", "verify", "versions", "tune-retriever"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(command: str | None) -> None:
    result = runner.invoke(app, [command, "--help"] if command else ["--help"])
    assert result.exit_code == 0
    assert "--params" in result.output or command is None
    if command is None:
        assert all(c in result.output for c in COMMANDS)


def _json(*args: str) -> object:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_contracts(deployment: Deployment) -> None:
    p = str(deployment.params_file)
    report = _json("index", "--direct", "--json", "--params", p)
    assert set(report) >= {"index_version", "documents", "chunks", "errors"}
    assert set(report["documents"]) == {"added", "modified", "deleted", "renamed", "unchanged", "failed"}
    assert set(report["chunks"]) == {"embedded", "reused", "deleted", "total"}
    hits = _json("query", "how much does a SWIFT transfer cost", "-k", "2", "--json", "--params", p)
    assert isinstance(hits, list) and len(hits) == 2
    assert [set(h) for h in hits] == [{"doc", "chunk_id", "score", "text"}] * 2
    assert hits[0]["doc"] == "fees.md"
    verdict = _json("verify", "--json", "--params", p)
    assert {k: verdict[k] for k in ("ok", "missing", "orphaned", "duplicated", "foreign_embedder")} == {
        "ok": True, "missing": 0, "orphaned": 0, "duplicated": 0, "foreign_embedder": 0}  # fmt: skip
    deployment.write("fees.md", "# Fees\n\nAll transfers are free.")
    _json("index", "--direct", "--json", "--params", p)
    back = _json("index", "--rollback", "--json", "--params", p)  # alone: the previous version
    assert (back["index_version"], back["rolled_back_to"]) == (3, 1)
    versions = _json("versions", "--json", "--params", p)
    assert [(v["version"], v["kind"], v["published"]) for v in versions] == [
        (1, "index", False), (2, "index", False), (3, "rollback", True)]  # fmt: skip


def test_query_before_any_index_is_a_clear_error(deployment: Deployment) -> None:
    result = runner.invoke(app, ["query", "anything", "--params", str(deployment.params_file)])
    assert result.exit_code == 1
    assert "run `ragloop index` first" in result.output


def test_bad_params_exit_2_naming_the_field(deployment: Deployment) -> None:
    deployment.params_file.write_text("chunking:\n  max_chars: -3\n")
    result = runner.invoke(app, ["index", "--params", str(deployment.params_file)])
    assert result.exit_code == 2
    assert "chunking.max_chars" in result.output


def test_rollback_needs_a_number(deployment: Deployment) -> None:
    result = runner.invoke(app, ["index", "--rollback", "latest", "--params", str(deployment.params_file)])
    assert result.exit_code == 1
    assert "--rollback takes a version number" in result.output


def test_only_index_rollback_takes_an_optional_version() -> None:
    assert optional_rollback_value(["--rollback", "--json"]) == ["--rollback", "previous", "--json"]
    assert optional_rollback_value(["--rollback", "2", "--json"]) == ["--rollback", "2", "--json"]
    assert optional_rollback_value(["--json", "--rollback"]) == ["--json", "--rollback", "previous"]
    commands = {c.callback.__name__: c.cls for c in app.registered_commands if c.callback}
    assert commands["index"] is OptionalRollback  # tune-retriever's --rollback is a plain flag
    assert [name for name, cls in commands.items() if cls is OptionalRollback] == ["index"]
