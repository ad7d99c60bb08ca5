"""Stage-level rules: what a page's TDMRep meta covers, informational uses, `--require` in the CLI."""

from __future__ import annotations

import pyarrow.parquet as pq
from click.testing import CliRunner

from audit import optouts
from audit.cli import cli
from audit.optouts.cache import CrawlCache, Response

A = "https://a.example"


def cache(root, pages: dict[str, str], images: int = 2):
    responses = [
        Response(A + f, k, 200 if k == "robots" else 404, [], b"User-agent: *\nAllow: /\n")
        for k, f in (
            ("robots", "/robots.txt"),
            ("ai.txt", "/ai.txt"),
            ("tdmrep", "/.well-known/tdmrep.json"),
        )
    ]
    for i in range(images):
        responses.append(Response(f"{A}/{i}.png", "image", 200, [], None))
    for url, meta in pages.items():
        responses.append(
            Response(
                url,
                "page",
                200,
                [("Content-Type", "text/html")],
                f"<html><head>{meta}</head></html>".encode(),
            )
        )
    store = CrawlCache(root, {})
    store.add(responses)
    root.mkdir()
    store.save()
    return root


def test_tdm_meta_covers_the_html_page_not_its_images(make_workspace, tmp_path):
    """TDMRep HTML technique: the `tdm-reservation` meta "applies to the HTML page" it is in; an
    image shown on that page carries its own declaration (header, tdmrep.json, embedded)."""
    pages = {
        f"{A}/p/0": '<meta name="tdm-reservation" content="1">',
        f"{A}/p/1": '<meta name="robots" content="noimageai">',
    }
    ws = make_workspace(
        [None, None], urls=[f"{A}/0.png", f"{A}/1.png"], extra={"page_url": list(pages)}
    )
    s = optouts.compute(ws.root, cache=cache(tmp_path / "c", pages))
    dec = {
        (d["row_id"], d["use"]): d
        for d in pq.read_table(ws.path("optout/decisions.parquet")).to_pylist()
    }
    assert (
        dec[(0, "data_mining")]["decision"] == "allowed"
    )  # the page's TDM meta is not the image's
    assert dec[(1, "genai_training")]["decision"] == "reserved"  # noimageai speaks about images
    assert s["coverage"]["page"] == {"evaluated": 2}


def test_search_indexing_is_informational_unless_excluded(make_workspace, tmp_path):
    pages = {f"{A}/p/0": '<meta name="robots" content="noindex">', f"{A}/p/1": ""}
    ws = make_workspace(
        [None, None], urls=[f"{A}/0.png", f"{A}/1.png"], extra={"page_url": list(pages)}
    )
    optouts.compute(ws.root, cache=cache(tmp_path / "c", pages))
    dec = {
        (d["row_id"], d["use"]): d["decision"]
        for d in pq.read_table(ws.path("optout/decisions.parquet")).to_pylist()
    }
    assert dec[(0, "search_indexing")] == "reserved" and dec[(0, "genai_training")] == "allowed"
    assert optouts.filter_dataset(ws.root, tmp_path / "a.parquet")["kept"] == 2
    s = optouts.filter_dataset(ws.root, tmp_path / "b.parquet", exclude=["search_indexing"])
    assert s["kept"] == 1 and s["excluded_uses"] == ["search_indexing"]
    # with the index policy, noindex also reserves AI training
    optouts.compute(ws.root, cache=tmp_path / "c", index_policy=True)
    assert optouts.filter_dataset(ws.root, tmp_path / "c.parquet")["kept"] == 1


def test_cli_filter_require(make_workspace, tmp_path):
    pages = {f"{A}/p/0": ""}
    ws = make_workspace(
        [None, None], urls=[f"{A}/0.png", f"{A}/1.png"], extra={"page_url": [f"{A}/p/0", None]}
    )
    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "optout",
            str(ws.root),
            "--cache",
            str(cache(tmp_path / "c", pages)),
            "--report-dir",
            str(tmp_path / "r"),
        ],
    )
    assert res.exit_code == 0 and "evaluated sources: " in res.output, res.output
    res = runner.invoke(cli, ["filter", str(ws.root), "--out", str(tmp_path / "k.parquet")])
    assert res.exit_code == 0 and "kept 2 of 2" in res.output, res.output
    res = runner.invoke(
        cli,
        ["filter", str(ws.root), "--out", str(tmp_path / "k.parquet"), "--require", "page,robots"],
    )
    assert res.exit_code == 0 and "kept 1 of 2" in res.output and "coverage 1" in res.output, (
        res.output
    )
    res = runner.invoke(
        cli, ["filter", str(ws.root), "--out", str(tmp_path / "k.parquet"), "--require", "pagez"]
    )
    assert res.exit_code == 1 and "not a source" in res.output


def test_embedded_metadata_present_but_unreadable_is_unchecked(make_workspace):
    """An XMP packet that declares entities is refused (never expanded): the image's own
    declaration could not be read, so the row is `unchecked`, never allowed."""
    from pathlib import Path

    from test_optout_parsers_embedded import png

    bomb = (Path(__file__).parent / "data" / "optout" / "xmp_entity_bomb.xml").read_bytes()
    image = png((b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + bomb))
    ws = make_workspace([image], urls=[f"{A}/0.png"])
    s = optouts.compute(ws.root)
    assert s["decisions"]["genai_training"] == {"unchecked": 1}
    assert s["coverage"]["embedded"] == {"missing": 1}


def test_a_malformed_url_is_not_allowed_by_a_registry_that_could_not_match_it(
    make_workspace, tmp_path
):
    reg = tmp_path / "r.txt"
    reg.write_text("b.example\n")
    ws = make_workspace([None, None], urls=["http://[::1", f"{A}/ok.png"])
    s = optouts.compute(ws.root, registry=[reg])
    cov = pq.read_table(ws.path("optout/coverage.parquet")).column("registry").to_pylist()
    assert cov == ["absent", "evaluated"]
    assert s["decisions"]["genai_training"] == {"not_evaluable": 1, "allowed": 1}
    from audit.workspace import Workspace

    n = Workspace.open(ws.root).connect().execute("SELECT count(*) FROM optout_coverage").fetchone()
    assert n == (2,)
