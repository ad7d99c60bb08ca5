"""Every report page of an audited workspace, opened in headless Chromium as a reader would.

Asserts, per page: no broken image, no failing link, no console error, no element wider than
the page; every page links to every other; a screenshot of each lands in
`reports/screenshots/sample/` (git-ignored) to look at. Also: no absolute path of this
machine in any report, and stale pages from an earlier run are marked.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from browser import Browser, available

from audit.reports import overview, written_at

SCREENSHOTS = Path(__file__).resolve().parents[1] / "reports" / "screenshots"
EXPECTED = {
    "index.html",
    "optout.html",
    "synthetic.html",
    "duplicates.html",
    "memorisation.html",
    "calibration.html",
    "bias/bias.html",
    "bias/bias_generated.html",
    "MODEL_CARD.html",
}
needs_chromium = pytest.mark.skipif(
    not available(),
    reason="Debian's chromium is not installed at /usr/bin/chromium (make system, or apt-get install chromium)",
)


@needs_chromium
def test_every_page_reads_in_a_real_browser(audited_sample: Path):
    reports = audited_sample / "reports" / "sample"
    found = sorted(reports.rglob("*.html"))
    rel = {p: p.relative_to(reports).as_posix() for p in found}
    assert EXPECTED <= set(rel.values())
    checks, problems = {}, {}
    with Browser(width=1280) as browser:
        for page in found:
            shot = SCREENSHOTS / "sample" / (rel[page][:-5].replace("/", "_") + ".png")
            shot.unlink(missing_ok=True)
            checks[rel[page]] = c = browser.check(page, shot)
            if c.problems:
                problems[rel[page]] = c.problems
            assert shot.stat().st_size > 5_000, shot  # a real picture of the page
    assert problems == {}
    for name, c in checks.items():  # every page links to every other page
        targets = {Path(unquote(urlparse(x).path)) for x in c.links if x.startswith("file:")}
        missing = {rel[p] for p in found if p.resolve() not in targets and rel[p] != name}
        assert not missing, f"{name} does not link to {missing}"
    import pyarrow.parquet as pq

    dups = pq.read_table(audited_sample / "indexes" / "sample" / "duplicates.parquet")
    clusters = len(set(dups["cluster_id"].to_pylist()))
    assert clusters >= 5 and checks["duplicates.html"].images >= clusters  # a sheet per cluster
    assert checks["memorisation.html"].images >= 4  # pairs and histograms
    assert checks["bias/bias.html"].images >= 4


@needs_chromium
def test_the_checker_catches_what_it_looks_for(tmp_path: Path):
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!doctype html><html><head><link rel='icon' href='data:,'></head><body>"
        "<img src='missing.png'><a href='nowhere.html'>x</a><a href='#nope'>y</a>"
        "<div style='width:3000px'>wide</div><script>console.error('boom')</script></body></html>"
    )
    with Browser(width=800) as browser:
        c = browser.check(bad)
    assert c.broken_images == ["missing.png"]
    assert {Path(urlparse(x).path).name for x in c.failing_links} == {"nowhere.html", "bad.html"}
    assert any("div" in w for w in c.too_wide)
    assert any("boom" in e for e in c.console_errors)


def test_no_absolute_path_in_any_report(audited_sample: Path):
    reports = audited_sample / "reports"
    absolute = re.compile(r"(?<![\w.~-])/(?:tmp|home|root|work|usr|var|opt|mnt|srv|Users|private)/")
    files = [p for p in reports.rglob("*") if p.suffix in (".md", ".html", ".csv", ".json")]
    assert len(files) >= 14
    for path in files:
        text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", path.read_text("utf-8"))
        assert str(audited_sample) not in text, path
        found = absolute.search(text)
        assert found is None, f"{path.name}: {text[max(0, found.start() - 60) : found.end() + 60]}"


def test_pages_from_an_earlier_run_are_marked_stale(audited_sample: Path, tmp_path: Path):
    from audit.reports.memorisation import write_calibration_page

    reports = tmp_path / "reports"
    shutil.copytree(audited_sample / "reports" / "sample", reports)
    ws = audited_sample / "indexes" / "sample"
    overview.write(ws, reports)
    assert "marked stale" not in (reports / "index.md").read_text()
    # a page left by an earlier run: written before this workspace was ingested
    html = reports / "calibration.html"
    html.write_text(
        re.sub(
            r'(name="audit-written" content=")[^"]+',
            r"\g<1>2001-01-01T00:00:00+00:00",
            html.read_text(),
        )
    )
    assert written_at(reports / "calibration.md") == "2001-01-01T00:00:00+00:00"
    overview.write(ws, reports)
    index = (reports / "index.md").read_text()
    assert "1 page(s) are from an earlier run and marked stale" in index
    assert "before this workspace was ingested" in (reports / "calibration.md").read_text()
    assert 'class="stale"' in html.read_text()
    assert 'class="stale"' not in (reports / "optout.html").read_text()
    # written again, the page is current and loses its banner
    write_calibration_page(reports)
    overview.write(ws, reports)
    assert 'class="stale"' not in html.read_text()
    assert "marked stale" not in (reports / "index.md").read_text()


def test_stale_rules(make_workspace):
    ws = make_workspace([None, None])
    ingested = ws.stage("ingest")["started"]
    assert "before this workspace was ingested" in overview.stale_reason(
        ws, "duplicates.md", "2001-01-01T00:00:00+00:00"
    )
    assert "no finished `dedup` stage" in overview.stale_reason(ws, "duplicates.md", ingested)
    ws.start_stage("dedup", {}).finish({})
    finished = ws.stage("dedup")["finished"]
    assert overview.stale_reason(ws, "duplicates.md", finished) is None
    ws.manifest["stages"]["dedup"]["started"] = "2999-01-01T00:00:00+00:00"  # dedup re-ran later
    assert "ran again" in overview.stale_reason(ws, "duplicates.md", finished)
    assert overview.stale_reason(ws, "calibration.md", finished) is None  # no stage to compare
    assert "no record" in overview.stale_reason(ws, "optout.md", None)
