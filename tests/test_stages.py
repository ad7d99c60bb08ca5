"""The stage list (`audit.stages.STAGES`) is the one place a stage is declared: check that
every name in it resolves, that `audit run` can call each entry with the arguments declared,
and that the workspace, the status page and the CLI read it."""

from __future__ import annotations

import inspect
from pathlib import Path

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


# -- typed summaries ---------------------------------------------------------------------------


@pytest.mark.parametrize("stage", stages.STAGES, ids=lambda s: s.name)
def test_key_figures_are_fields_of_the_stage_summary(stage: stages.Stage):
    import dataclasses

    from audit.results import Summary

    assert stage.summary is not Summary, f"{stage.name} declares no summary dataclass"
    assert dataclasses.is_dataclass(stage.summary)
    names = {f.name for f in dataclasses.fields(stage.summary)}
    assert set(stage.key_figures) <= names, f"{stage.name}: {set(stage.key_figures) - names}"


def test_a_summary_reads_by_name_ignores_extras_and_is_frozen():
    import dataclasses

    from audit.results import HashSummary

    recorded = {"rows": 10, "hashed": 9, "errors": 1, "hashes": ["phash", "dhash"], "new": 3}
    s = stages.summary("hash", recorded)
    assert isinstance(s, HashSummary)
    assert (s.rows, s.hashed, s.errors, s.hashes) == (10, 9, 1, ("phash", "dhash"))
    assert "new" not in s.to_dict()
    assert s.to_dict()["hashes"] == ["phash", "dhash"]  # JSON values: lists, not tuples
    assert HashSummary.from_dict(s.to_dict()) == s
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.hashed = 0  # type: ignore[misc]
    # a manifest record from before a field existed still reads; None reads as the defaults
    assert stages.summary("hash", {"rows": 4}).rows_per_second is None
    assert stages.summary("hash", None) == HashSummary()
    # `match-<name>` records are the stage "match"
    assert stages.summary("match-ddpm", {"generated": 5}).generated == 5


def test_nested_summary_fields_are_typed():
    from audit.results import RegistryRead

    s = stages.summary(
        "optout", {"rows": 3, "registries": [{"path": "/x/reg.csv", "domains": 2, "odd": 1}]}
    )
    assert s.registries == (RegistryRead(path="/x/reg.csv", domains=2),)
    assert s.to_dict()["registries"][0]["domains"] == 2


def test_every_summary_field_is_a_key_the_stage_records(make_workspace):
    """A field the stage never records would always read as its default: catch a misspelt
    field on a stage cheap enough to run here."""
    import dataclasses

    from conftest import encode, synthetic_image

    from audit import hashes

    ws = make_workspace([encode(synthetic_image(i)) for i in range(6)] + [None])
    recorded = hashes.compute(ws.root, workers=1)
    names = {f.name for f in dataclasses.fields(stages.BY_NAME["hash"].summary)}
    assert names <= set(recorded), names - set(recorded)
    typed = stages.summary("hash", recorded)
    assert typed.to_dict() == {k: v for k, v in recorded.items() if k in names}
    assert (typed.rows, typed.hashed) == (7, 6)
    # what the manifest recorded reads the same as what the stage returned
    from audit.workspace import Workspace

    record = Workspace.open(ws.root).stage("hash")
    assert stages.summary("hash", record["summary"]) == typed


def test_audit_run_hands_back_typed_summaries(tmp_path, monkeypatch):
    """`pipeline.run` turns each stage's returned dict into the stage's summary class."""
    from audit import pipeline
    from audit.results import HashSummary

    calls = []

    def fake_hash(**kw):
        calls.append(kw)
        return {"rows": 2, "hashed": 2, "errors": 0, "hashes": ["phash"]}

    hash_stage = stages.BY_NAME["hash"]
    monkeypatch.setattr(stages, "STAGES", (hash_stage,))
    real_load = stages.load
    monkeypatch.setattr(
        stages, "load", lambda ref: fake_hash if ref == hash_stage.entry else real_load(ref)
    )
    ws = tmp_path / "ws"
    (ws).mkdir()
    (ws / "manifest.json").write_text("{}")
    monkeypatch.setattr(
        "audit.reports.overview.write", lambda root, out: Path(out) / "index.md", raising=True
    )
    got = pipeline.run(ws, pipeline.RunOptions(report_dir=str(tmp_path / "r")), echo=lambda _: None)
    assert calls and [r.stage for r in got] == ["hash"]
    assert got[0].summary == HashSummary(rows=2, hashed=2, hashes=("phash",))
    assert got[0].to_dict()["summary"]["hashes"] == ["phash"]
