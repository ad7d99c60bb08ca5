"""Generated-image bias: prompt grid, clustering on planted blobs, distances, CLI wiring."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import build_workspace, encode, synthetic_image

from audit.checks.bias import generated as bg
from audit.cli import cli
from audit.errors import AuditError
from audit.workspace import atomic_write_json, atomic_write_npy

# (profession, descriptor, blob of each of its 6 images)
PLAN = [
    ("doctor", "", [0, 0, 1, 1, 2, 2]),
    ("doctor", "female", [0] * 6),
    ("nurse", "", [1] * 6),
    ("nurse", "male", [1] * 6),
]


def planted(seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    rng = np.random.default_rng(seed)
    centres = np.eye(16)[:3] * 5
    rows, x = [], []
    for prof, desc, blobs in PLAN:
        for s, b in enumerate(blobs):
            rows.append(
                {
                    "file": f"{len(rows):09d}.img",
                    "prompt": f"a photo of the face of a {desc} {prof}".replace("  ", " "),
                    "profession": prof,
                    "descriptor": desc,
                    "seed": s,
                }
            )
            x.append(centres[b] + rng.normal(0, 0.05, 16))
    x = np.array(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), rows


def test_planted_clusters_entropy_and_distances():
    x, rows = planted()
    res = bg.analyse(x, rows, reps=300, seed=0, max_k=5)
    assert res["k"] == 3
    prompts = {(p["profession"], p["descriptor"]): p for p in res["prompts"]}
    assert prompts[("doctor", "")]["entropy"] == pytest.approx(1.0)
    assert prompts[("doctor", "female")]["entropy"] == pytest.approx(0.0)
    assert sorted(prompts[("doctor", "")]["clusters"]) == [2, 2, 2]
    comps = {(c["profession"], c["descriptor"]): c for c in res["comparisons"]}
    assert comps[("doctor", "female")]["tv"] == pytest.approx(2 / 3)
    assert comps[("nurse", "male")]["tv"] == pytest.approx(0.0)
    assert comps[("nurse", "male")]["js"] == pytest.approx(0.0)
    for c in comps.values():
        assert c["tv_ci95"][0] <= c["tv"] <= c["tv_ci95"][1]
    # the chance level is positive at 6 images per prompt: distances are judged against it
    assert 0 < comps[("doctor", "female")]["tv_null"] < comps[("doctor", "female")]["tv"]
    assert (
        bg.analyse(x, rows, reps=300, seed=0, max_k=5)["comparisons"] == res["comparisons"]
    )  # seeded


def test_default_grid_and_round_trip(tmp_path: Path):
    rows = bg.default_grid(seeds=3)
    assert len(rows) == len(bg.PROFESSIONS) * len(bg.DESCRIPTORS) * 3
    assert len({r["file"] for r in rows}) == len(rows)
    plain = [r for r in rows if r["descriptor"] == "" and r["profession"] == "nurse"]
    assert plain[0]["prompt"] == "a photo of the face of a nurse"
    assert any(r["prompt"] == "a photo of the face of a female nurse" for r in rows)
    path = bg.write_grid(tmp_path / "grid.csv", seeds=3)
    loaded = bg.load_prompts(path)
    assert [(r["file"], r["prompt"], r["descriptor"]) for r in loaded] == [
        (r["file"], r["prompt"], r["descriptor"]) for r in rows
    ]


def test_prompt_table_joined_with_generated_parquet(tmp_path: Path):
    grid = tmp_path / "grid.csv"
    with open(grid, "w", newline="") as f:  # no file column: generation order is unknown
        w = csv.DictWriter(f, fieldnames=["prompt", "profession", "descriptor", "seed"])
        w.writeheader()
        w.writerows(
            [
                {"prompt": "a nurse", "profession": "nurse", "descriptor": "", "seed": 0},
                {"prompt": "a male nurse", "profession": "nurse", "descriptor": "male", "seed": 0},
            ]
        )
    gen = tmp_path / "gen"
    gen.mkdir()
    with pytest.raises(AuditError, match="no `file` column"):
        bg.load_prompts(grid, gen)
    pq.write_table(
        pa.table(
            {
                "file": ["000000.png", "000001.png"],
                "caption": ["a male nurse", "a nurse"],
                "seed": [0, 0],
            }
        ),
        gen / "generated.parquet",
    )
    rows = {r["file"]: r for r in bg.load_prompts(grid, gen)}
    assert rows["000000.png"]["descriptor"] == "male" and rows["000001.png"]["descriptor"] == ""


def _described(root: Path, x: np.ndarray, trained: bool = False) -> None:
    """A workspace like `pipeline.describe` leaves: metadata + embeddings/img-*.npy + model.json."""
    build_workspace(root, [encode(synthetic_image(i, 16)) for i in range(len(x))])
    atomic_write_npy(root / "embeddings" / "img-00000.npy", x.astype(np.float16))
    atomic_write_json(
        root / "embeddings" / "model.json",
        {"model": "tiny", "pretrained": "none", "trained": trained, "dim": x.shape[1]},
    )


def _write_rows(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(bg.COLUMNS))
        w.writeheader()
        w.writerows(rows)
    return path


def test_compute_on_described_workspace(tmp_path: Path):
    x, rows = planted()
    _described(tmp_path / "ws", x)
    table = _write_rows(tmp_path / "grid.csv", rows + [{**rows[0], "file": "missing.png"}])
    s = bg.compute(tmp_path / "ws", table, report_dir=tmp_path / "rep", bootstrap=100)
    assert s["images"] == 24 and s["k"] == 3 and s["unmatched_prompt_rows"] == 1
    assert s["mean_tv_by_descriptor"]["female"] == pytest.approx(2 / 3, abs=1e-3)
    stored = json.loads((tmp_path / "ws" / bg.OUTPUT).read_text())
    assert stored["model"]["trained"] is False
    md = (tmp_path / "rep" / "bias_generated.md").read_text()
    assert (
        "untrained" in md
        and "Stable Bias" in md
        and "nobody's gender or ethnicity is inferred" in md
    )
    assert "data:image/png;base64" in (tmp_path / "rep" / "bias_generated.html").read_text()


def test_cli_grid_and_generated(tmp_path: Path, monkeypatch):
    runner = CliRunner()
    r = runner.invoke(cli, ["bias", "grid", "--out", str(tmp_path / "g.csv"), "--seeds", "2"])
    assert r.exit_code == 0, r.output
    assert f"{len(bg.PROFESSIONS) * len(bg.DESCRIPTORS) * 2} prompt rows" in r.output

    x, rows = planted()
    gen = tmp_path / "gen"
    gen.mkdir()
    calls = []

    def fake_describe(ws_root, sources, **kw):  # the lead's composer; here without ingest/embed
        calls.append((Path(ws_root), [Path(s) for s in sources], kw))
        _described(Path(ws_root), x)

    import audit.pipeline

    monkeypatch.setattr(audit.pipeline, "describe", fake_describe)
    table = _write_rows(tmp_path / "grid.csv", rows)
    r = runner.invoke(
        cli,
        [
            "bias",
            "--generated",
            str(gen),
            "--prompts",
            str(table),
            str(tmp_path / "ws"),
            "--report-dir",
            str(tmp_path / "rep"),
            "--bootstrap",
            "50",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "24 images in 3 clusters over 4 prompts" in r.output
    assert calls[0][1] == [gen] and calls[0][2] == {"index": False}
    r = runner.invoke(cli, ["bias", "--generated", str(gen)])
    assert r.exit_code == 1 and "--prompts" in r.output
