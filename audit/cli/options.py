"""Options several commands share, and the rule that a CLI default is the library's default.

`library(ref, param)` makes an option whose default is read from the signature of the library
function the command calls ("module:function"), so `--help` shows the real default and the
two cannot drift apart (`tests/test_cli_options.py` checks every command). `json_option` and
`emit` give every command `--json`, which prints the command's result instead of its
one-line summary; `engine_options` choose the executor of per-part stages.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from audit import stages

F = Callable[..., Any]


def default(ref: str, param: str) -> Any:
    """The default of `param` in the signature of the library function `ref`."""
    value = inspect.signature(stages.load(ref)).parameters[param].default
    if value is inspect.Parameter.empty:
        raise TypeError(f"{ref} has no default for {param}")
    return value


def library(ref: str, param: str, *decls: str, **kw: Any) -> Callable[[F], F]:
    """`click.option` for keyword `param` of `ref`, defaulting to the library's default."""
    value = default(ref, param)
    if isinstance(value, tuple):  # multiple=True options default to a tuple already
        value = tuple(value)
    kw.setdefault("show_default", value is not None and value != ())
    return click.option(*(decls or (f"--{param.replace('_', '-')}",)), default=value, **kw)


def given(**kw: Any) -> dict[str, Any]:
    """Options the user set; the rest keep the library's defaults (for options without one)."""
    return {k: v for k, v in kw.items() if v is not None}


WS = click.argument("ws", metavar="WS", type=click.Path(file_okay=False, path_type=Path))

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON instead of a summary line."
)


def _plain(value: Any) -> Any:
    if callable(getattr(value, "to_dict", None)):  # typed results say how they are JSON
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def emit(result: Any, as_json: bool, line: Callable[[], str]) -> None:
    """Print `result` as JSON (`--json`), else the command's summary `line()`."""
    if as_json:
        click.echo(json.dumps(_plain(result), indent=2, default=str))
    else:
        click.echo(line())


def engine_options(ref: str) -> Callable[[F], F]:
    """`--engine` and `--ray-address` for a command whose library function `ref` takes them."""

    def decorate(f: F) -> F:
        f = library(
            ref, "ray_address", help="Ray cluster: auto, or ray://HOST:PORT (--engine ray)."
        )(f)
        return library(
            ref,
            "engine",
            type=click.Choice(["local", "ray"]),
            help="Run the parts in this process, or as Ray tasks (pip install 'audit[ray]').",
        )(f)

    return decorate
