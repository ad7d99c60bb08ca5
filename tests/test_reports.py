"""Report pages read as text: one interval format, rates as percentages, links between pages,
the duplicates keep/remove list, and where reports go."""

from __future__ import annotations

import csv
from pathlib import Path

from audit.reports import Section, default_dir, fmt, overview, write_page


def test_one_interval_format():
    assert fmt(0.015625, [0.0, 0.046875], pct=True) == "1.6% [0.0%, 4.7%]"
    assert fmt(0.8, [0.1333, 4.0]) == "0.8 [0.133, 4]"
    assert fmt(-0.0) == "0" and fmt(None) == "n/a"
    assert fmt(0.5, [None, 0.9]) == "0.5 [n/a, 0.9]"  # an unbounded end, not "-inf"


def test_key_figures_are_readable():
    summary = {
        "generated": 64,
        "counts": {"copy": 1, "near": 17, "novel": 46},
        "replication_rate": 0.015625,
    }
    assert overview.figures("match-ddpm", summary) == (
        "generated 64; counts copy 1, near 17, novel 46; replication rate 1.6%"
    )
    decisions = {"decisions": {"genai_training": {"reserved": 135, "allowed": 165}}, "rows": 300}
    assert overview.figures("optout", decisions) == (
        "rows 300; decisions genai_training (reserved 135, allowed 165)"
    )


def test_markdown_renders_and_links_go_to_html(tmp_path: Path):
    write_page(
        tmp_path,
        "optout",
        "Consent audit: `x`",
        [Section("A", "see [the duplicates](duplicates.md#cluster-0)\n\n- one `code`\n- two")],
    )
    html = (tmp_path / "optout.html").read_text()
    assert '<a href="duplicates.html#cluster-0">' in html  # the HTML page links the HTML page
    assert "<li>one <code>code</code></li>" in html and "`" not in html.split("<main>")[1]
    assert "[the duplicates](duplicates.md#cluster-0)" in (tmp_path / "optout.md").read_text()


def test_every_page_links_the_others_once_they_exist(tmp_path: Path):
    write_page(tmp_path, "optout", "Consent", [Section("A", "a")])
    assert "duplicates.html" not in (tmp_path / "optout.html").read_text()  # no dead link
    write_page(tmp_path, "duplicates", "Duplicates", [Section("A", "a")])
    write_page(tmp_path / "bias", "bias", "Bias", [Section("A", "a")])
    assert 'href="duplicates.html"' in (tmp_path / "optout.html").read_text()  # refreshed
    assert 'href="bias/bias.html"' in (tmp_path / "optout.html").read_text()
    bias = (tmp_path / "bias" / "bias.html").read_text()
    assert 'href="../optout.html"' in bias and 'href="../duplicates.html"' in bias
    assert "[Consent](../optout.md)" in (tmp_path / "bias" / "bias.md").read_text()


def test_reports_location_follows_the_workspace(tmp_path: Path):
    assert default_dir(tmp_path / "indexes" / "laion") == tmp_path / "reports" / "laion"
    assert default_dir(tmp_path / "elsewhere") == tmp_path / "elsewhere" / "reports"


def test_duplicates_keep_list(audited_sample: Path):
    reports = audited_sample / "reports" / "sample"
    with open(reports / "duplicates_keep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    clusters: dict[str, list[dict]] = {}
    for r in rows:
        clusters.setdefault(r["cluster_id"], []).append(r)
    # every clustered row of the sample: 8 sha256 alias groups and one verified near pair; its
    # numbered families (gift01-04 in other colours, two moons, two hats, two lightbulbs,
    # herringbone in two colours) are colour variants or other drawings, not duplicates
    assert len(clusters) == 9 and len(rows) == 18
    for members in clusters.values():
        kept = [r for r in members if r["action"] == "keep"]
        assert len(kept) == 1 and kept[0]["reason"].startswith("keep: ")
        removed = [r for r in members if r["action"] == "remove"]
        assert all(f"duplicate of row {kept[0]['row_id']}" in r["reason"] for r in removed)
        # a row its creators reserved is never kept over one they did not
        if any(r["optout"] == "reserved" for r in members) and any(
            r["optout"] != "reserved" for r in members
        ):
            assert kept[0]["optout"] != "reserved" and "not reserved" in kept[0]["reason"]
    assert "duplicates_keep.csv" in (reports / "duplicates.md").read_text()


def test_keep_prefers_unreserved_then_larger(make_workspace, tmp_path: Path):
    import pyarrow as pa
    from conftest import encode, synthetic_image

    from audit import hashes
    from audit.checks import duplicates
    from audit.reports import duplicates as page
    from audit.workspace import Output, atomic_write_parquet

    a, b = synthetic_image(1, 64), synthetic_image(2, 64)
    images = [encode(a), encode(a), encode(b), encode(b.resize((128, 128)))]
    size = [64, 64, 64, 128]
    ws = make_workspace(images, extra={"image_width": size, "image_height": size})
    # rows 0/1: the same image, row 0 reserved by its creator; rows 2/3: row 3 is twice the size
    decisions = pa.table(
        {
            "row_id": pa.array([0, 1, 2, 3], pa.int64()),
            "use": ["genai_training"] * 4,
            "decision": ["reserved", "allowed", "allowed", "allowed"],
            "signal": ["registry-domain", "", "", ""],
            "location": [""] * 4,
            "evidence": [""] * 4,
            "agent": [""] * 4,
        }
    )
    run = ws.start_stage("optout", {})
    atomic_write_parquet(ws.path("optout/decisions.parquet"), decisions)
    run.finish({"rows": 4}, [Output("optout/decisions.parquet", 4)])
    hashes.compute(ws.root, workers=1)
    duplicates.find(ws.root, embeddings="never")
    page.write(ws.root, tmp_path / "rep")
    with open(tmp_path / "rep" / "duplicates_keep.csv", newline="") as f:
        rows = {int(r["row_id"]): r for r in csv.DictReader(f)}
    assert rows[1]["action"] == "keep" and "not reserved by its creators" in rows[1]["reason"]
    assert rows[0]["action"] == "remove" and "duplicate of row 1" in rows[0]["reason"]
    assert rows[3]["action"] == "keep" and "most pixels (128x128)" in rows[3]["reason"]
    assert rows[2]["action"] == "remove"
