"""The consent stage on LAION-style metadata: 10,000 rows, no page URL column, no images yet.

What the issue asked for: `audit optout` + `audit filter` with a registry keeps exactly the rows no
signal reserves, the report shows coverage per source, `--require` makes absent sources count, and
a registry's rules of every kind (exact URL, URL prefix, host, domain, registrable domain) match
what they say; rules that match nothing are reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from audit import optouts
from audit.cli import cli
from audit.errors import AuditError

N = 10_000
HOSTS = ["cdn.shop.example.co.uk", "img.example.com", "a.b.example.org", "other.example.net"]


def laion_rows(n: int = N) -> pa.Table:
    """LAION-400M/5B parquet columns; URLs spread over four hosts and two folders."""
    return pa.table(
        {
            "SAMPLE_ID": pa.array(range(n), pa.int64()),
            "URL": [
                f"https://{HOSTS[i % 4]}/{'photos' if i % 5 else 'art'}/{i}.jpg" for i in range(n)
            ],
            "TEXT": [f"a photo number {i}" for i in range(n)],
            "HEIGHT": pa.array([256 + i % 7 for i in range(n)], pa.int64()),
            "WIDTH": pa.array([320 + i % 5 for i in range(n)], pa.int64()),
            "LICENSE": [
                "?" if i % 3 else "https://creativecommons.org/licenses/by/4.0/" for i in range(n)
            ],
            "NSFW": ["UNLIKELY"] * n,
            "similarity": pa.array([0.3 + (i % 10) / 100 for i in range(n)], pa.float64()),
        }
    )


REGISTRY = """# a small do-not-train registry with one rule of each kind
https://img.example.com/art/5.jpg
https://img.example.com/photos/*
host:a.b.example.org data_mining
site:www.example.co.uk
nothing-matches.example
https://other.example.net/art/
"""


def reserved_by_registry(i: int) -> bool:
    host, folder = HOSTS[i % 4], "photos" if i % 5 else "art"
    return (
        (host == "img.example.com" and (folder == "photos" or i == 5))
        or host == "a.b.example.org"
        or host.endswith(".example.co.uk")
    )


@pytest.fixture(scope="module")
def laion(tmp_path_factory):
    from audit import metadata

    root = tmp_path_factory.mktemp("laion")
    src = root / "part-00000.parquet"
    pq.write_table(laion_rows(), src, row_group_size=2500)
    ws = root / "ws"
    metadata.ingest(ws, [src], rows_per_part=4000)
    reg = root / "registry.txt"
    reg.write_text(REGISTRY)
    summary = optouts.compute(ws, registry=[reg])
    return root, ws, reg, summary


def test_default_filter_keeps_the_rows_no_signal_reserves(laion):
    root, ws, _, summary = laion
    s = optouts.filter_dataset(ws, root / "clean.parquet")
    expected = [i for i in range(N) if not reserved_by_registry(i)]
    assert s["kept"] == len(expected) > 0 and s["by_decision"] == {"reserved": N - len(expected)}
    clean = pq.read_table(root / "clean.parquet")
    assert clean.column("SAMPLE_ID").to_pylist() == expected  # the input's own rows and schema
    assert clean.schema.names == laion_rows(1).schema.names
    # the allowed rows say on what basis, and what could not be looked at
    d = optouts_decision(ws, expected[0])
    assert d[0] == "allowed" and "evaluated: registry" in d[1] and "embedded" in d[1]


def optouts_decision(ws: Path, row_id: int) -> tuple[str, str]:
    from audit.workspace import Workspace

    return (
        Workspace.open(ws)
        .connect()
        .execute(
            "SELECT decision, evidence FROM optout WHERE use = 'genai_training' AND row_id = ?",
            [row_id],
        )
        .fetchone()
    )


def test_coverage_per_row_and_per_dataset(laion):
    _, ws, _, summary = laion
    cov = pq.read_table(ws / "optout" / "coverage.parquet")
    assert cov.num_rows == N and cov.column("row_id").to_pylist() == list(range(N))
    assert set(cov.column("page").to_pylist()) == {"absent"}  # no page URL column at all
    assert set(cov.column("robots").to_pylist()) == {"not_consulted"}  # no crawl cache given
    assert set(cov.column("embedded").to_pylist()) == {"absent"}  # no image bytes yet
    assert set(cov.column("registry").to_pylist()) == {"evaluated"}
    assert "no image bytes" in cov.column("not_evaluated")[0].as_py()
    assert summary["coverage"]["embedded"] == {"absent": N}
    assert summary["evaluable"] == ["registry"]
    assert summary["coverage_notes"]["page"] == {"absent": "the dataset has no page URL column"}
    assert summary["decisions"]["genai_training"]["allowed"] == sum(
        not reserved_by_registry(i) for i in range(N)
    )


def test_require_makes_absent_sources_count(laion):
    root, ws, _, _ = laion
    s = optouts.filter_dataset(ws, root / "strict.parquet", require=["embedded"])
    assert s["kept"] == 0 and s["by_signal"].get("embedded absent") == s["by_decision"]["coverage"]
    s = optouts.filter_dataset(ws, root / "reg.parquet", require=["registry"])
    assert s["kept"] == sum(not reserved_by_registry(i) for i in range(N))
    with pytest.raises(AuditError, match="not a source"):
        optouts.filter_dataset(ws, root / "x.parquet", require=["pages"])


def test_registry_rule_kinds_and_unmatched_rules(laion):
    _, ws, _, summary = laion
    from audit.workspace import Workspace

    con = Workspace.open(ws).connect()
    ev = dict(
        con.execute(
            "SELECT row_id, evidence FROM optout WHERE use = 'genai_training' "
            "AND decision = 'reserved' AND row_id IN (5, 1, 2, 3, 4)"
        ).fetchall()
    )
    assert "URL rule img.example.com/art/5.jpg" in ev[5]  # exact URL (img host, art folder)
    assert "URL prefix rule img.example.com/photos/*" in ev[1]
    assert "host rule a.b.example.org" in ev[2]
    assert "domain rule example.co.uk" in ev[4]  # site: -> registrable domain
    assert 3 not in ev  # other.example.net/art/ is an exact URL rule: it matches no row
    reg = summary["registries"][0]
    assert reg["rules"] == 6 and reg["unmatched"] == 2
    assert any("nothing-matches.example" in e for e in reg["examples"])
    assert any(
        "needs a final '*'" in e for e in reg["examples"]
    )  # the URL that looks like a prefix
    # data_mining use on the host rule widens to every use
    dm = con.execute(
        "SELECT decision FROM optout WHERE use = 'data_mining' AND row_id = 2"
    ).fetchone()
    assert dm == ("reserved",)


def test_report_shows_coverage(laion, tmp_path):
    _, ws, _, _ = laion
    from audit.reports import optout as report

    md = report.write(ws, tmp_path).read_text()
    head = md.split("## Decisions per use")[0]
    assert "## Coverage" in head and "embedded" in head and "absent" in head
    assert f"| embedded | iptc-xmp, c2pa | 0 | 0 | {N} | 0 | absent: no image bytes" in md
    page = f"| page | html-meta-robots, tdm-meta | 0 | 0 | {N} | 0 | absent: the dataset has no page URL"
    assert page in md
    assert "matched no row" in md


def test_missing_registry_is_a_bad_argument_and_overwrites_nothing(laion, tmp_path):
    _, ws, _, _ = laion
    before = (ws / "optout" / "decisions.parquet").stat().st_mtime_ns
    res = CliRunner().invoke(cli, ["optout", str(ws), "--registry", str(tmp_path / "typo.txt")])
    assert res.exit_code == 1 and "no such file" in res.output
    assert (ws / "optout" / "decisions.parquet").stat().st_mtime_ns == before
    manifest = json.loads((ws / "manifest.json").read_text())
    assert manifest["stages"]["optout"]["status"] == "done"
