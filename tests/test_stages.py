"""The stage list (`audit.stages.STAGES`) is the one place a stage is declared: check that
every name in it resolves, that `audit run` can call each entry with the arguments declared,
and that the workspace, the status page and the CLI read it."""

from __future__ import annotations

import inspect

import pytest

from audit import stages
from audit.cli import cli
from audit.reports import overview
from audit.workspace import TABLES


@pytest.mark.parametrize("stage", stages.STAGES, ids=lambda s: s.name)
def test_every_function_resolves_and_takes_the_declared_arguments(stage: stages.Stage):
    entry = stages.load(stage.entry)
    params = inspect.signature(entry).parameters
    assert {kw for kw, _ in stage.args} <= set(params), f"{stage.entry} lacks an argument"
    for ref in (stage.report, stage.part, stage.finish):
        if ref:
            assert callable(stages.load(ref))
    assert stage.command in cli.commands, f"no `audit {stage.command}` command"
    assert set(stage.reads) <= set(stages.BY_NAME), f"{stage.name} reads an unknown stage"


def test_run_values_name_every_argument(tmp_path, monkeypatch):
    from pathlib import Path

    from audit import pipeline

    monkeypatch.chdir(tmp_path)  # run_values makes the report folder: keep it out of the checkout
    values = pipeline.run_values(Path("indexes/x"), pipeline.RunOptions())
    for stage in stages.STAGES:
        if stage.when != "never":
            assert {key for _, key in stage.args} <= set(values), stage.name


def test_workspace_and_status_page_read_the_stage_list():
    assert TABLES is stages.TABLES
    # the views, in the order `audit query` lists them
    assert list(TABLES) == [
        "metadata",
        "errors",
        "hashes",
        "clip_scores",
        "duplicates",
        "duplicates_metadata",
        "optout",
        "optout_signals",
        "optout_coverage",
        "synthetic",
        "matches",
    ]
    assert overview.KEY_FIGURES["hash"] == ("hashed", "errors")
    assert "MODEL_CARD.md" in dict(overview.PAGES)
    assert len(stages.BY_NAME) == len(stages.STAGES)


def test_missing_upstream_names_the_command(tmp_path):
    from audit.errors import AuditError
    from audit.workspace import Workspace

    ws = Workspace.create(tmp_path / "ws")
    with pytest.raises(AuditError, match="Run: audit ingest"):
        ws.start_stage("hash", {}, depends_on=["ingest"])


def test_a_bad_reference_is_an_audit_error():
    from audit.errors import AuditError

    with pytest.raises(AuditError, match="cannot be loaded"):
        stages.load("audit.hashes:no_such_function")
