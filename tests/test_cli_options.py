"""Every CLI default is the library's default, and every command can print its result as JSON."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from audit import stages
from audit.cli import cli

# The library function each command calls (the stage list names the stages' own).
LIBRARY = {
    **{s.command: s.entry for s in stages.STAGES if s.when != "never"},
    "features": "audit.features:build",
    "query": "audit.sql:export",
    "status": "audit.sql:status",
    "roots": "audit.workspace:roots",
    "run": "audit.pipeline:RunOptions",
    "optout decide": "audit.optouts:compute",
    "optout crawl": "audit.optouts:crawl",
    "optout import-warc": "audit.optouts:import_warc",
    "optout export-warc": "audit.optouts:export_warc",
    "filter": "audit.optouts:filter_dataset",
    "bias run": "audit.checks.bias:compute",
    "bias grid": "audit.checks.bias.generated:write_grid",
    "calibrate": "audit.pipeline:calibrate",
    "experiment": "audit.experiments:memorisation",
    "sample build": "audit.sample:build",
    "import-embeddings": "audit.clip_retrieval:import_embeddings",
    "export-embeddings": "audit.clip_retrieval:export_embeddings",
}
UNSET = getattr(click.core, "UNSET", None)  # click >= 8.3 marks "no default" with a sentinel
# Options whose CLI value is converted before the call, so their types differ on purpose.
CONVERTED = {("train", "resolution"): str, ("hash", "which"): lambda v: ",".join(v)}
# No default on purpose: None means "the preset's value" (`audit run --demo` trains 3000 steps).
PRESET = {("run", "train_steps"), ("run", "train_minutes")}


def leaves(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out = []
    for name, cmd in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            out += leaves(cmd, path + " ")
        else:
            out.append((path, cmd))
    return out


COMMANDS = leaves(cli)


def _same(cli_default, lib_default) -> bool:
    if isinstance(lib_default, (tuple, list)) or isinstance(cli_default, (tuple, list)):
        return list(cli_default or ()) == list(lib_default or ())
    if isinstance(lib_default, Path) or isinstance(cli_default, Path):
        return str(cli_default) == str(lib_default)
    return cli_default == lib_default


def library_defaults(ref: str) -> dict:
    """Parameter -> default of a function, or field -> default of an options dataclass."""
    fn = stages.load(ref)
    if dataclasses.is_dataclass(fn):
        return {
            f.name: f.default_factory()
            if f.default_factory is not dataclasses.MISSING
            else f.default
            for f in dataclasses.fields(fn)
        }
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()}


def test_every_command_has_a_library_function():
    assert {p for p, _ in COMMANDS} <= set(LIBRARY), "add the new command to LIBRARY"


@pytest.mark.parametrize("path,command", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_cli_defaults_equal_library_defaults(path: str, command: click.Command):
    params = library_defaults(LIBRARY[path])
    checked = 0
    for opt in command.params:
        if not isinstance(opt, click.Option) or opt.name not in params:
            continue
        if (path, opt.name) in CONVERTED:
            assert opt.default == CONVERTED[path, opt.name](params[opt.name])
            continue
        if (path, opt.name) in PRESET:
            assert opt.default in (None, UNSET)
            continue
        lib = params[opt.name]
        cli_default = None if opt.default is UNSET else opt.default
        if opt.multiple and cli_default is None:
            cli_default = ()
        if opt.is_flag and cli_default is None:
            cli_default = False
        if lib is inspect.Parameter.empty:
            continue  # required by the library: the CLI requires it too or fills it
        if cli_default is None and lib is not None:
            pytest.fail(f"audit {path} --{opt.name}: no default; the library's is {lib!r}")
        assert _same(cli_default, lib), f"audit {path} --{opt.name}: {cli_default!r} != {lib!r}"
        checked += 1
    assert (
        checked
        or path in ("optout export-warc", "optout import-warc", "card")
        or not [o for o in command.params if isinstance(o, click.Option) and o.name in params]
    )


@pytest.mark.parametrize("path,command", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_has_json(path: str, command: click.Command):
    names = {o.name for o in command.params}
    assert "as_json" in names or (path == "query" and "format" in names)


def test_json_prints_the_result(tmp_path: Path):
    from audit import sample

    src = Path(sample.__file__).parent / "data" / "sample" / "shards"
    if not src.is_dir():
        pytest.skip("bundled sample not built")
    ws = tmp_path / "ws"
    r = CliRunner().invoke(cli, ["ingest", str(ws), str(src), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["rows"] == 300 and summary["parts"] == 1
    r = CliRunner().invoke(cli, ["status", str(ws), "--json"])
    assert json.loads(r.stdout)["stages"]["ingest"]["status"] == "done"
