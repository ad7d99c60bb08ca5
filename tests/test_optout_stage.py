"""The consent stage end to end: planted signals in image bytes, a crawl cache and registries
give exactly the planted decisions, with their evidence; the filter writes the input's schema."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import encode, synthetic_image

from audit import optouts
from audit.cli import cli
from audit.errors import AuditError
from audit.optouts.cache import CrawlCache, Response
from audit.workspace import Workspace

SAMPLE = Path(__file__).resolve().parents[1] / "audit" / "data" / "sample"
T = "2025-01-01T00:00:00+00:00"


def xmp_png(seed: int, value: str) -> bytes:
    """A PNG whose iTXt XML:com.adobe.xmp packet carries plus:DataMining = value."""
    from PIL.PngImagePlugin import PngInfo

    xmp = (
        '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
        'xmlns:plus="http://ns.useplus.org/ldf/xmp/1.0/" '
        f'plus:DataMining="http://ns.useplus.org/ldf/vocab/{value}"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )
    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    buf = io.BytesIO()
    synthetic_image(seed).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def host_files(
    origin: str, robots=(b"User-agent: *\nAllow: /\n", 200), aitxt=(b"", 404), tdm=(b"", 404)
) -> list[Response]:
    return [
        Response(origin + path, kind, status, [("Content-Type", "text/plain")], body, T)
        for kind, path, (body, status) in (
            ("robots", "/robots.txt", robots),
            ("ai.txt", "/ai.txt", aitxt),
            ("tdmrep", "/.well-known/tdmrep.json", tdm),
        )
    ]


def image(url: str, *headers: tuple[str, str]) -> Response:
    return Response(url, "image", 200, [("Content-Type", "image/png"), *headers], None, T)


def page(url: str, meta: str = "index") -> Response:
    body = f'<html><head><meta name="robots" content="{meta}"></head><body></body></html>'.encode()
    return Response(url, "page", 200, [("Content-Type", "text/html")], body, T)


# Row i: (image bytes, image URL, page URL) and what the cache says about it.
A, B, C = "https://a.example.com", "https://b.example.org", "https://c.example.net"
ROWS = [
    (lambda: xmp_png(0, "DMI-PROHIBITED-AIMLTRAINING"), f"{A}/i/0.png"),  # 0 XMP: ai+genai reserved
    (lambda: xmp_png(1, "DMI-PROHIBITED-GENAIMLTRAINING"), f"{A}/i/1.png"),  # 1 XMP: genai only
    (lambda: encode(synthetic_image(2)), f"{A}/i/2.png"),  # 2 X-Robots-Tag noai on the 2nd line
    (
        lambda: encode(synthetic_image(3)),
        f"{A}/i/3.png",
    ),  # 3 X-Robots-Tag otherbot: noai -> allowed
    (lambda: encode(synthetic_image(4)), f"{A}/i/4.png"),  # 4 not in cache -> unchecked
    (lambda: encode(synthetic_image(5)), f"{A}/i/5.png"),  # 5 no page_url -> not_evaluable
    (lambda: encode(synthetic_image(6)), f"{B}/gpt/6.png"),  # 6 robots disallows GPTBot /gpt/
    (lambda: encode(synthetic_image(7)), f"{B}/ok/7.png"),  # 7 allowed everywhere
    (lambda: encode(synthetic_image(8)), f"{C}/x/8.png"),  # 8 robots 503 -> disallow all
    (lambda: None, f"{A}/i/9.png"),  # 9 no image bytes -> not_evaluable
    (lambda: encode(synthetic_image(10)), f"{A}/i/10.png"),  # 10 page meta noimageai
    (lambda: encode(synthetic_image(11)), f"{A}/tdm/11.png"),  # 11 tdmrep.json reserves /tdm/*
    (
        lambda: encode(synthetic_image(12)),
        f"{A}/tdm/12.png",
    ),  # 12 ... but header tdm-reservation: 0 overrides
]


def build_cache(root: Path) -> Path:
    tdm = b'[{"location": "/tdm/*", "tdm-reservation": 1, "tdm-policy": "https://a.example.com/policy"}]'
    responses = host_files(A, tdm=(tdm, 200))
    responses += host_files(
        B, robots=(b"User-agent: gptbot\nDisallow: /gpt/\n\nUser-agent: *\nAllow: /\n", 200)
    )
    responses += host_files(C, robots=(b"", 503))
    for i, (_, url) in enumerate(ROWS):
        if i == 4:
            continue
        headers = {
            2: [("X-Robots-Tag", "noarchive"), ("x-robots-tag", "NoAI")],
            3: [("X-Robots-Tag", "otherbot: noai")],
            12: [("TDM-Reservation", "0")],
        }.get(i, [])
        responses.append(image(url, *headers))
        responses.append(
            page(f"https://pages.example.com/p/{i}", "noimageai" if i == 10 else "index, follow")
        )
    store = CrawlCache(root, {})
    store.add(responses)
    root.mkdir(parents=True, exist_ok=True)
    store.save()
    return root


@pytest.fixture
def planted(make_workspace, tmp_path):
    pages = [None if i == 5 else f"https://pages.example.com/p/{i}" for i in range(len(ROWS))]
    ws = make_workspace(
        [make() for make, _ in ROWS],
        urls=[u for _, u in ROWS],
        rows_per_part=5,
        extra={"page_url": pages},
    )
    return ws, build_cache(tmp_path / "cache")


def decisions(ws: Workspace, use: str = "genai_training") -> dict[int, tuple[str, str, str]]:
    rows = (
        ws.connect()
        .execute(
            "SELECT row_id, decision, signal, evidence FROM optout WHERE use = ? ORDER BY row_id",
            [use],
        )
        .fetchall()
    )
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_planted_decisions_and_evidence(planted):
    ws, cache = planted
    summary = optouts.compute(ws.root, cache=cache)
    genai, ai, tdm = decisions(ws), decisions(ws, "ai_training"), decisions(ws, "data_mining")
    assert genai[0][:2] == ("reserved", "iptc-xmp") and "DMI-PROHIBITED-AIMLTRAINING" in genai[0][2]
    assert (
        genai[1][:2] == ("reserved", "iptc-xmp") and ai[1][0] == "allowed"
    )  # genai-only prohibition
    assert genai[2][:2] == ("reserved", "x-robots-tag") and "NoAI" in genai[2][2]
    assert genai[3][0] == "allowed" and genai[3][1] == "none"
    assert genai[4][:2] == ("unchecked", "x-robots-tag") and "not in the crawl cache" in genai[4][2]
    # no page_url: the page source does not exist for this row; the other sources decide
    assert genai[5][:2] == ("allowed", "none") and "no source for this row: page" in genai[5][2]
    assert genai[6][:2] == ("reserved", "robots.txt") and "Disallow: /gpt/" in genai[6][2]
    assert tdm[6][0] == "allowed"  # a GPTBot disallow reserves AI training, not all mining
    assert genai[7][0] == "allowed" and tdm[7][0] == "allowed"
    assert (
        genai[8][:2] == ("reserved", "robots.txt")
        and tdm[8][0] == "reserved"
        and "503" in genai[8][2]
    )
    assert genai[9][0] == "allowed" and "no source for this row: embedded" in genai[9][2]
    assert genai[10][:2] == ("reserved", "html-meta-robots") and "noimageai" in genai[10][2]
    assert genai[11][:2] == ("reserved", "tdmrep.json") and "/tdm/*" in genai[11][2]
    assert genai[12][0] == "allowed"  # the resource's header overrides the site file
    assert summary["decisions"]["genai_training"] == {"reserved": 7, "allowed": 5, "unchecked": 1}
    cov = {r["row_id"]: r for r in pq.read_table(ws.path("optout/coverage.parquet")).to_pylist()}
    assert cov[5]["page"] == "absent" and cov[9]["embedded"] == "absent"
    assert cov[4]["headers"] == "missing" and cov[7]["robots"] == "evaluated"
    assert cov[0]["registry"] == "not_consulted" and summary["coverage"]["page"]["absent"] == 1
    # every signal row names its row, use and evidence; the agent of the scoped robots rule is kept
    sig = pq.read_table(ws.path("optout/signals.parquet"))
    assert set(sig.column("use").to_pylist()) == {"genai_training", "ai_training", "data_mining"}
    robots6 = [
        r
        for r in sig.to_pylist()
        if r["row_id"] == 6 and r["signal"] == "robots.txt" and r["state"] == "reserved"
    ]
    assert {r["agent"] for r in robots6} == {"GPTBot"}
    # one decision per row and use, aligned with the metadata
    dec = pq.read_table(ws.path("optout/decisions.parquet"))
    assert dec.num_rows == 5 * len(ROWS)  # three training uses + search_indexing, ai_inference
    assert Workspace.open(ws.root).status()["optout"]["status"] == "done"


def test_precedence_and_unreadable_registry(planted, tmp_path):
    ws, cache = planted
    reg = tmp_path / "domains.txt"
    reg.write_text("# opt-outs\nb.example.org\n")
    with pytest.raises(AuditError, match="no such file"):
        optouts.compute(ws.root, registry=[reg, tmp_path / "missing-urls.csv"], cache=cache)
    assert not ws.path("optout/decisions.parquet").exists()  # nothing written
    broken = tmp_path / "missing-urls.csv"
    broken.write_text("link,use\nhttps://x.example/a.png,ai_training\n")  # no url column
    optouts.compute(ws.root, registry=[reg, broken], cache=cache)
    genai = decisions(ws)
    # registry signals come first: they are quoted when they tie with the robots.txt reservation
    assert genai[6][:2] == genai[7][:2] == ("reserved", "registry-domain")
    assert "domain rule b.example.org matches host b.example.org" in genai[7][2]
    # the unreadable registry makes every row at least unchecked, never allowed
    assert genai[3][:2] == ("unchecked", "registry-url") and "missing-urls.csv" in genai[3][2]
    assert all(d[0] != "allowed" for d in genai.values())
    s = Workspace.open(ws.root).stage("optout")["summary"]
    assert len(s["registry_errors"]) == 1 and "missing-urls.csv" in s["registry_errors"][0]


def test_without_cache_says_not_consulted_and_resumes(planted):
    ws, _ = planted
    s = optouts.compute(ws.root)
    assert set(s["not_consulted"]) >= {"robots.txt", "x-robots-tag", "ai.txt", "tdmrep.json"}
    genai = decisions(ws)
    assert genai[2][0] == "allowed" and "not consulted" in genai[2][2]  # headers never looked at
    assert genai[0][0] == "reserved"  # embedded signals need no cache
    before = ws.path("optout/decisions.parquet").stat().st_mtime_ns
    again = optouts.compute(ws.root)  # same parameters, same inputs: done, nothing rewritten
    assert again["decisions"] == s["decisions"]
    assert ws.path("optout/decisions.parquet").stat().st_mtime_ns == before


def laion_parquet(path: Path, n: int) -> pa.Table:
    table = pa.table(
        {
            "URL": [f"https://img{i % 3}.example.com/p/{i}.jpg" for i in range(n)],
            "TEXT": [f"caption {i}" for i in range(n)],
            "WIDTH": pa.array([64 + i for i in range(n)], pa.int64()),
            "HEIGHT": pa.array([48] * n, pa.int64()),
            "similarity": pa.array([0.3] * n, pa.float64()),
            "punsafe": pa.array([0.01] * n, pa.float64()),
            "pwatermark": pa.array([0.1] * n, pa.float64()),
            "hash": pa.array(range(n), pa.int64()),
            "LANGUAGE": ["en"] * n,
            "my_extra": [f"x{i}" for i in range(n)],
        }
    )
    pq.write_table(table, path)
    return table


def test_filter_writes_the_input_schema(tmp_path):
    from audit import metadata

    src = tmp_path / "laion.parquet"
    original = laion_parquet(src, 12)
    ws_root = tmp_path / "ws"
    metadata.ingest(ws_root, [src], rows_per_part=5)
    reg = tmp_path / "urls.csv"
    reg.write_text("url,use\nhttps://IMG1.example.com:443/p/1.jpg,ai_training\n")
    dom = tmp_path / "domains.txt"
    dom.write_text("img2.example.com\n")
    optouts.compute(ws_root, registry=[reg, dom])
    out = tmp_path / "clean.parquet"
    # metadata-only rows have no image bytes: the embedded source is absent, the registries decide
    s = optouts.filter_dataset(ws_root, out)
    clean = pq.read_table(out)
    assert clean.schema.remove_metadata().equals(original.schema.remove_metadata())
    expected = [r for i, r in enumerate(original.to_pylist()) if i != 1 and i % 3 != 2]
    assert clean.to_pylist() == expected
    assert s["removed"] == 12 - len(expected) and s["by_decision"] == {
        "reserved": 12 - len(expected)
    }
    assert s["by_signal"] == {"registry-domain": 4, "registry-url": 1}
    removed = json.loads((tmp_path / "clean.removed.json").read_text())
    assert removed["by_domain"] == {"img2.example.com": 4, "img1.example.com": 1}
    kept = pq.read_table(ws_root / "optout" / "kept.parquet").column("row_id").to_pylist()
    assert kept == [i for i in range(12) if i != 1 and i % 3 != 2]
    assert Workspace.open(ws_root).stage("filter")["status"] == "done"
    # asking for embedded coverage: nothing, since no image bytes could be read yet
    strict = optouts.filter_dataset(ws_root, tmp_path / "strict.parquet", require=["embedded"])
    assert strict["kept"] == 0 and strict["by_decision"]["coverage"] == len(expected)
    # the input moved away: rows are rebuilt from the workspace under the input's names
    src.rename(tmp_path / "moved.parquet")
    s2 = optouts.filter_dataset(ws_root, tmp_path / "rebuilt.parquet")
    rebuilt = pq.read_table(tmp_path / "rebuilt.parquet")
    assert s2["rows_written"]["rebuilt_from_workspace"] == len(expected)
    assert set(rebuilt.column_names) == set(original.column_names)
    assert rebuilt.column("URL").to_pylist() == [r["URL"] for r in expected]
    assert rebuilt.column("my_extra").to_pylist() == [r["my_extra"] for r in expected]


def test_filter_arguments(planted, tmp_path):
    ws, _ = planted
    with pytest.raises(AuditError, match="Run first: audit optout"):
        optouts.filter_dataset(ws.root, tmp_path / "c.parquet")
    optouts.compute(ws.root)
    with pytest.raises(AuditError, match="never kept"):
        optouts.filter_dataset(ws.root, tmp_path / "c.parquet", keep=["reserved"])
    with pytest.raises(AuditError, match="not a use"):
        optouts.filter_dataset(ws.root, tmp_path / "c.parquet", use="training")


def test_cli_optout_and_filter(planted, tmp_path):
    ws, cache = planted
    runner = CliRunner()
    reg = tmp_path / "r.txt"
    reg.write_text("b.example.org\n")
    res = runner.invoke(
        cli,
        [
            "optout",
            str(ws.root),
            "--registry",
            str(reg),
            "--cache",
            str(cache),
            "--report-dir",
            str(tmp_path / "rep"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "13 rows" in res.output and "reserved 8" in res.output
    md = (tmp_path / "rep" / "optout.md").read_text()
    assert (
        "registry-domain" in md
        and "Disallow: /gpt/" in md
        and (tmp_path / "rep" / "optout.html").exists()
    )
    res = runner.invoke(
        cli,
        [
            "filter",
            str(ws.root),
            "--out",
            str(tmp_path / "clean.parquet"),
            "--keep",
            "unchecked",
            "--keep",
            "not_evaluable",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "kept 5 of 13" in res.output
    res = runner.invoke(
        cli, ["filter", str(ws.root), "--out", str(tmp_path / "c.parquet"), "--keep", "reserved"]
    )
    assert res.exit_code != 0
    res = runner.invoke(cli, ["optout", str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "not an audit workspace" in res.output
    res = runner.invoke(cli, ["optout", str(ws.root), "--cache", str(tmp_path / "nocache")])
    assert res.exit_code == 1 and "not a crawl cache" in res.output
    for args in (["optout", "--help"], ["optout", "crawl", "--help"], ["filter", "--help"]):
        res = runner.invoke(cli, args)
        assert res.exit_code == 0 and "Example" in res.output


@pytest.mark.skipif(
    not (SAMPLE / "laion" / "sample.parquet").exists(), reason="bundled sample not built"
)
def test_sample_signals_are_deterministic_and_committed(tmp_path):
    copy = tmp_path / "sample"
    (copy / "laion").mkdir(parents=True)
    shutil.copy(SAMPLE / "laion" / "sample.parquet", copy / "laion" / "sample.parquet")
    optouts.sample_signals(copy)
    first = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (copy / "optout").rglob("*")
        if p.is_file()
    }
    optouts.sample_signals(copy)
    second = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (copy / "optout").rglob("*")
        if p.is_file()
    }
    assert first == second and "responses.parquet" in first
    committed = SAMPLE / "optout"
    if committed.exists():
        for p in committed.rglob("*"):
            if p.is_file():
                assert hashlib.sha256(p.read_bytes()).hexdigest() == first[p.name], (
                    f"{p} is stale: rebuild it"
                )
    total = sum(p.stat().st_size for p in (copy / "optout").rglob("*") if p.is_file())
    assert total < 300_000
