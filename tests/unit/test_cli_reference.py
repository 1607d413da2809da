"""docs/cli.md is the command-line reference rendered from the app (flows/cli/reference.py): a test fails when it is
out of date, and the rendering depends on the app alone (not the terminal, the environment or the checkout)."""

from __future__ import annotations

import copy
import difflib
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
import typer

from flows.cli import reference as cli_reference

ROOT = Path(__file__).resolve().parents[2]


def stale(rendered: str, current: str) -> str | None:
    """None when docs/cli.md holds `rendered`, else the message to show, with the first lines that differ."""
    if rendered == current:
        return None
    diff = difflib.unified_diff(current.splitlines(), rendered.splitlines(), "docs/cli.md", "rendered", lineterm="")
    return "docs/cli.md is out of date with the command-line app: run `make docs`\n" + "\n".join(list(diff)[:30])


def test_docs_cli_md_is_current() -> None:
    assert cli_reference.REFERENCE == ROOT / "docs" / "cli.md"
    current = cli_reference.REFERENCE.read_text(encoding="utf-8") if cli_reference.REFERENCE.exists() else ""
    message = stale(cli_reference.render(cli_reference.load_app()), current)
    if message:
        pytest.fail(message, pytrace=False)


def test_an_app_with_one_more_command_is_out_of_date() -> None:
    app = cli_reference.load_app()
    extra = copy.copy(app)
    extra.registered_commands = list(app.registered_commands)  # the real app stays as it is

    @extra.command("frobnicate")
    def frobnicate(level: Annotated[int, typer.Option(help="How hard.")] = 3) -> None:
        """Frobnicate the index."""

    rendered = cli_reference.render(extra)
    message = stale(rendered, cli_reference.render(app))
    assert message is not None and "run `make docs`" in message
    assert "## `ragloop frobnicate`" in rendered and "Frobnicate the index." in rendered
    assert "| `--level` | int | `3` | How hard. |" in rendered
    assert "frobnicate" not in cli_reference.render(app)


def test_every_command_and_subcommand_has_a_section() -> None:
    root = typer.main.get_command(cli_reference.load_app())
    rendered = cli_reference.render(cli_reference.load_app())
    assert isinstance(root, typer.core.TyperGroup)
    for name, command in root.commands.items():
        assert f"\n## `ragloop {name}`\n" in rendered
        for sub in getattr(command, "commands", {}):
            assert f"\n## `ragloop {name} {sub}`\n" in rendered


def test_rendering_ignores_the_terminal_the_environment_and_the_checkout(tmp_path: Path) -> None:
    """Rendered in a fresh process from another folder, with a narrow colour terminal and another HOME: the same
    text, with no escape codes and no path of this checkout or this machine."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "COLUMNS": "37", "LINES": "10", "TERM": "xterm-256color", "FORCE_COLOR": "1",
           "HOME": str(tmp_path), "PYTHONPATH": path}  # fmt: skip
    env.pop("NO_COLOR", None)
    code = "import sys; from flows.cli import reference as c; sys.stdout.write(c.render(c.load_app()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         encoding="utf-8", timeout=120, check=True).stdout  # fmt: skip
    here = cli_reference.render(cli_reference.load_app())
    assert out == here
    assert "\x1b" not in here
    for machine_path in {str(ROOT), str(Path.home()), str(tmp_path)}:
        assert machine_path not in here


def test_a_default_that_is_a_path_of_this_machine_is_refused() -> None:
    app = typer.Typer(name="ragloop")

    @app.command()
    def one(where: Annotated[Path, typer.Option(help="Where.")] = ROOT / "params.yaml") -> None:
        """One."""

    @app.command()
    def two(where: Annotated[Path, typer.Option(show_default="the project's params.yaml")] = ROOT) -> None:
        """Two."""

    with pytest.raises(ValueError, match="absolute path of this machine"):
        cli_reference.render(app)
    app.registered_commands.pop(0)
    assert "| `--where` | path | the project's params.yaml |" in cli_reference.render(app)
