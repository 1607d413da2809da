"""The command-line reference, docs/cli.md, rendered from the Typer app through click's own introspection.

`make docs` writes it (`python -m flows.cli.reference`); tests/unit/test_cli_reference.py fails when it is out of
date. The text depends on the app alone: no terminal width, no colours, no environment, no path of this machine (a
default that is an absolute path is refused: give the option a relative default, or a `show_default` text).
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def load_app() -> typer.Typer:
    """The app the reference documents: its one import, so a move of the app changes only this line."""
    from flows.cli import app

    return app


def render(app: typer.Typer) -> str:
    """Markdown: every command and subcommand (in the order `--help` lists them) with its help, usage, arguments and
    options (name, type, default, help).

    Read through the click-shaped objects `typer.main.get_command` returns (recent Typer releases vendor their own
    click, so they are not `click` classes): a group's `commands`, a command's `params` and `collect_usage_pieces`,
    a parameter's `param_type_name`, `opts`, `secondary_opts`, `is_flag`, `default`, `required`, `help`."""
    root = typer.main.get_command(app)
    name = app.info.name if isinstance(app.info.name, str) else "ragloop"
    lines = [f"# `{name}` command reference", ""]
    lines += ["Generated from the command-line app by `make docs` (flows/cli/reference.py): do not edit by hand.", ""]
    for command, ctx in _walk(root, typer.Context(root, info_name=name)):
        lines += _section(command, ctx)
    return "\n".join(lines).rstrip("\n") + "\n"


def _commands(command: Any) -> list[tuple[str, Any]]:
    """A group's visible subcommands, in the order they were added (the order of `--help`); [] for a command."""
    return [(n, c) for n, c in getattr(command, "commands", {}).items() if not c.hidden]


def _walk(command: Any, ctx: typer.Context) -> Iterator[tuple[Any, typer.Context]]:
    yield command, ctx
    for sub_name, sub in _commands(command):
        yield from _walk(sub, typer.Context(sub, info_name=sub_name, parent=ctx))


def _section(command: Any, ctx: typer.Context) -> list[str]:
    path = ctx.command_path
    lines = [f"## `{path}`", ""]
    if text := _help(command.help):
        lines += [text, ""]
    lines += [f"Usage: `{path} {' '.join(command.collect_usage_pieces(ctx))}`", ""]
    if subs := _commands(command):
        lines += ["| command | what it does |", "|---|---|"]
        lines += [f"| [`{n}`](#{_anchor(f'{path} {n}')}) | {_cell(_first_paragraph(c.help))} |" for n, c in subs]
        lines.append("")
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    arguments = [p for p in params if p.param_type_name == "argument"]
    options = [p for p in params if p.param_type_name == "option"]
    if arguments:
        lines += ["| argument | type | default | help |", "|---|---|---|---|"]
        lines += [_row(f"`{(p.metavar or p.name or '').upper()}`", p, ctx) for p in arguments]
        lines.append("")
    if options:
        lines += ["| option | type | default | help |", "|---|---|---|---|"]
        lines += [_row(_option_names(p), p, ctx) for p in options]
        lines.append("")
    return lines


def _row(name: str, param: Any, ctx: typer.Context) -> str:
    help_text = getattr(param, "help", None)  # Typer's arguments carry help too; click's do not
    return f"| {name} | {_cell(_type(param, ctx))} | {_cell(_default(param, ctx))} | {_cell(_help(help_text))} |"


def _option_names(option: Any) -> str:
    names = ", ".join(f"`{o}`" for o in option.opts)
    return f"{names} / {', '.join(f'`{o}`' for o in option.secondary_opts)}" if option.secondary_opts else names


def _type(param: Any, ctx: typer.Context) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    if hasattr(param, "display_type"):  # Typer's own parameters: <int range>, <str>, <path>, <a|b>
        text = param.display_type(ctx).removeprefix("<").removesuffix(">")
    else:  # a plain click parameter
        text = param.type.name
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None or high is not None:
        text += f" ({'' if low is None else f'{low} <= '}x{'' if high is None else f' <= {high}'})"
    if param.metavar:
        text += f" `{param.metavar}`"
    return text + (", repeatable" if param.multiple else "")


def _default(param: Any, ctx: typer.Context) -> str:
    if param.required:
        return "required"
    if isinstance(getattr(param, "show_default", None), str):
        return str(param.show_default)  # the option's own words for a default computed at run time
    value = param.default
    if callable(value):
        return "computed at run time"
    if value is None or (param.multiple and not value):
        return ""
    if getattr(param, "is_flag", False):
        if param.secondary_opts:
            return f"`{param.opts[0] if value else param.secondary_opts[0]}`"
        return "on" if value else "off"
    text = ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    if os.path.isabs(text):
        raise ValueError(f"{ctx.command_path} {param.name}: the default {text!r} is an absolute path of this machine; "
                         "give the option a relative default or a show_default text")  # fmt: skip
    return f"`{text}`"


def _help(text: str | None) -> str:
    """A help text as one Markdown paragraph per paragraph: click's `\\b` no-rewrap markers dropped."""
    if not text:
        return ""
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    kept = (" ".join(line.strip() for line in p.splitlines() if line.strip() != "\b") for p in paragraphs)
    return "\n\n".join(p for p in kept if p)


def _first_paragraph(text: str | None) -> str:
    return _help(text).split("\n\n", 1)[0]


def _cell(text: str) -> str:
    return text.replace("\n\n", " ").replace("|", "\\|")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    """Write the reference (to docs/cli.md, or to the path given)."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else REFERENCE
    out.write_text(render(load_app()), encoding="utf-8")
    sys.stdout.write(f"wrote {out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
