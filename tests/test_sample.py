"""The sample builder (on a fake openclipart tree made here) and the committed sample itself."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from defusedxml import ElementTree
from PIL import Image, ImageDraw

import audit.cli
from audit import sample
from audit.cli import AuditGroup
from audit.cli import sample as sample_cli
from audit.errors import AuditError

RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
PLUS = "{" + sample.PLUS_NS + "}"
FAMILIES = {
    "animals/birds/acquila_architetto_franc": 4,
    "recreation/games/hummer": 3,
    "shapes/jigsaw/jigsaw_red": 12,
}  # the last is too big to be taken whole


def _picture(seed: int, size: tuple[int, int], noisy: bool, alpha: bool) -> Image.Image:
    rng = np.random.default_rng(seed)
    mode = "RGBA" if alpha else "RGB"
    if noisy:  # compresses badly -> becomes a JPEG
        arr = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
        arr[..., -1] = 255 if alpha else arr[..., -1]
        img = Image.fromarray(arr, mode)
    else:
        img = Image.new(mode, size, (0, 0, 0, 0) if alpha else (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = (int(v) for v in rng.integers(0, min(size) // 2, 2))
        draw.ellipse(
            [x, y, x + size[0] // 3, y + size[1] // 3],
            fill=tuple(int(c) for c in rng.integers(0, 255, len(mode))),
        )
    return img


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An openclipart-like tree: families, singles over 5 categories, one symlink alias."""
    root = tmp_path_factory.mktemp("openclipart") / "png"
    names = []
    for fam, size in FAMILIES.items():
        names += [f"{fam}_{k:02d}.png" for k in range(1, size + 1)]
    authors = ["benji_park", "nicu_buculei", "ganson", "anonymous_person"]
    for c, cat in enumerate(["animals", "food/fruit", "people", "shapes", "transportation"]):
        names += [f"{cat}/thing{c}{k}_{authors[k % 4]}_01.png" for k in range(5)]
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        size = (300 + 7 * i, 200) if i % 3 == 0 else (90, 60 + i)
        _picture(i, size, noisy=i % 3 == 0, alpha=i % 2 == 0).save(path)
    (root / "education").mkdir()
    os.symlink("../people/thing20_benji_park_01.png", root / "education/thing20_benji_park_01.png")
    return root


@pytest.fixture(scope="module")
def built(fake_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("s") / "sample"
    return out, sample.build(out, n=20, seed=3, source_root=fake_root, optout_share=0.25)


def _members(tar_path: Path) -> list[tuple[str, bytes, tarfile.TarInfo]]:
    """Members with bytes read by seeking to `offset_data`, as ingest will."""
    out = []
    with tarfile.open(tar_path) as tar, open(tar_path, "rb") as f:
        for m in tar.getmembers():
            f.seek(m.offset_data)
            out.append((m.name, f.read(m.size), m))
    return out


def _xmp(data: bytes) -> bytes | None:
    info = Image.open(io.BytesIO(data)).info
    x = info.get("XML:com.adobe.xmp") or info.get("xmp")
    return x.encode() if isinstance(x, str) else x


def _data_mining(xmp: bytes) -> str:
    desc = ElementTree.fromstring(xmp).find(f".//{RDF}Description")
    value = desc.get(f"{PLUS}DataMining")
    return value if value is not None else desc.find(f"{PLUS}DataMining").text


def test_split_name_golden() -> None:
    assert sample.split_name("acquila_architetto_franc_01") == ("acquila", "architetto franc")
    assert sample.split_name("medicina_dottore_archite_01") == ("medicina dottore", "archite")
    assert sample.split_name("bat_orlando_karam_") == ("bat", "orlando karam")
    assert sample.split_name("crawfish1_bw_ganson") == ("crawfish1 bw", "ganson")
    # a cut name only counts when Debian cut the file name (24 characters)
    assert sample.split_name("cat_architetto_01") == ("cat architetto", None)
    assert sample.split_name("pattern-herringbone-3") == ("pattern-herringbone", None)


def test_build_is_deterministic(built: tuple[Path, dict], fake_root: Path, tmp_path: Path) -> None:
    out, summary = built
    again = sample.build(tmp_path / "again", n=20, seed=3, source_root=fake_root, optout_share=0.25)
    assert again["sha256"] == summary["sha256"]
    assert set(summary["sha256"]) == {
        "laion/sample.parquet",
        "shards/00000.tar",
        "shards/00000.parquet",
        "shards/00000_stats.json",
    }
    other = sample.build(tmp_path / "other", n=20, seed=4, source_root=fake_root, optout_share=0.25)
    assert other["sha256"]["shards/00000.tar"] != summary["sha256"]["shards/00000.tar"]


def test_rows_families_and_aliases(built: tuple[Path, dict], fake_root: Path) -> None:
    out, summary = built
    rows = pq.read_table(out / "laion" / "sample.parquet").to_pylist()
    assert len(rows) == 20 and summary["rows"] == 20
    rels = [r["source_file"].removeprefix(f"{fake_root.as_posix()}/") for r in rows]
    assert len(set(rels)) == 20
    present = {re.sub(r"_\d\d\.png$", "", r) for r in rels}
    for fam, size in FAMILIES.items():
        got = sum(r.startswith(fam + "_") for r in rels)
        assert got in (0, size) if size <= 6 else got == 0, fam
    assert any(fam in present for fam, size in FAMILIES.items() if size <= 6)
    # the symlink and its target are both rows: an exact duplicate under two categories
    assert (
        "education/thing20_benji_park_01.png" in rels and "people/thing20_benji_park_01.png" in rels
    )
    for r in rows:
        assert max(r["WIDTH"], r["HEIGHT"]) <= 256
        assert r["LANGUAGE"] == "en" and r["LICENSE"] == sample.LICENSE
        assert r["TEXT"].startswith(r["title"] + " clip art")
        assert (f"by {r['author']}" in r["TEXT"]) == (r["author"] is not None)
        host = r["URL"].split("/")[2]
        assert host == "openclipart.org" or host.endswith(
            ("example.com", "example.org", "example.net")
        )
        assert r["rehosted"] == (host != "openclipart.org")
    assert {r["author"] for r in rows} >= {"benji park"}


def test_tar_matches_parquets(built: tuple[Path, dict]) -> None:
    out, _ = built
    laion = pq.read_table(out / "laion" / "sample.parquet").to_pylist()
    shard = pq.read_table(out / "shards" / "00000.parquet").to_pylist()
    members = _members(out / "shards" / "00000.tar")
    assert len(members) == 3 * len(shard) == 3 * len(laion)
    formats = set()
    for i, (row, lrow) in enumerate(zip(shard, laion, strict=True)):
        assert row["key"] == f"{i:09d}" and row["url"] == lrow["URL"] and row["status"] == "success"
        (img_name, img, _), (txt_name, txt, _), (js_name, js, _) = members[3 * i : 3 * i + 3]
        ext = img_name.rsplit(".", 1)[1]
        formats.add(ext)
        assert img_name == f"{row['key']}.{ext}" and txt_name == f"{row['key']}.txt"
        assert js_name == f"{row['key']}.json"
        assert hashlib.sha256(img).hexdigest() == row["sha256"]
        assert txt.decode() == row["caption"] == lrow["TEXT"]
        meta = json.loads(js)
        assert meta["sha256"] == row["sha256"] and meta["url"] == row["url"]
        with Image.open(io.BytesIO(img)) as im:
            assert im.format == {"png": "PNG", "jpg": "JPEG"}[ext]
            assert im.size == (row["width"], row["height"]) == (meta["width"], meta["height"])
            assert ("with alpha" in row["transform"]) == (im.mode == "RGBA")
    assert formats == {"png", "jpg"}


def test_embedded_optouts(built: tuple[Path, dict]) -> None:
    out, summary = built
    shard = pq.read_table(out / "shards" / "00000.parquet").to_pylist()
    images = [
        m for m in _members(out / "shards" / "00000.tar") if not m[0].endswith((".txt", ".json"))
    ]
    flagged = [r["embedded_optout"] for r in shard if r["embedded_optout"]]
    assert len(flagged) == summary["embedded_optout"] == 5
    assert flagged == list(sample.OPTOUT_CYCLE[:5])
    for row, (_, data, _) in zip(shard, images, strict=True):
        xmp = _xmp(data)
        if row["embedded_optout"] is None:
            assert xmp is None
        else:
            assert _data_mining(xmp) == sample.DMI + row["embedded_optout"]


def test_embed_xmp_jpeg_and_element_form() -> None:
    data, fmt, w, h, how = sample.shrink(_encode(_picture(1, (600, 300), True, True)), max_side=128)
    assert (fmt, w, h) == ("jpg", 128, 64) and "flattened on white" in how
    tagged = sample.embed_xmp(data, fmt, sample.xmp_packet("DMI-PROHIBITED", element_form=True))
    assert _data_mining(_xmp(tagged)) == sample.DMI + "DMI-PROHIBITED"
    with Image.open(io.BytesIO(tagged)) as im:
        im.load()  # still a valid JPEG
    small, fmt, *_ = sample.shrink(_encode(_picture(2, (40, 30), False, True)), max_side=128)
    assert fmt == "png" and Image.open(io.BytesIO(small)).mode == "RGBA"


def _encode(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_bad_arguments(fake_root: Path, tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="apt-get install openclipart-png"):
        sample.build(tmp_path / "x", n=5, source_root=tmp_path / "nowhere")
    with pytest.raises(AuditError, match="--n"):
        sample.build(tmp_path / "x", n=500, source_root=fake_root)


def _cli():  # type: ignore[no-untyped-def]
    if "sample" in audit.cli.cli.commands:
        return audit.cli.cli
    group = AuditGroup(name="audit")  # until the lead registers the command
    for command in sample_cli.COMMANDS:
        group.add_command(command)
    return group


def test_cli_build(fake_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        _cli(),
        [
            "sample",
            "build",
            "--n",
            "6",
            "--out",
            str(tmp_path / "o"),
            "--source-root",
            str(fake_root),
            "--max-side",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("6 rows (")
    assert pq.read_metadata(tmp_path / "o" / "laion" / "sample.parquet").num_rows == 6
    result = runner.invoke(
        _cli(),
        [
            "sample",
            "build",
            "--source-root",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "p"),
        ],
    )
    assert result.exit_code == 1 and "openclipart-png" in result.output


def test_committed_sample() -> None:
    root = sample.BUNDLED
    readme = (root / "README.md").read_text()
    sums = dict(
        reversed(line.split("  ", 1))
        for line in re.search(r"sha256:\n\n```\n(.*?)\n```", readme, re.S).group(1).splitlines()
    )
    # other helpers keep their own fixtures beside ours (e.g. optout/); laion/ and shards/ are ours
    files = {
        p.relative_to(root).as_posix()
        for d in ("laion", "shards")
        for p in (root / d).rglob("*")
        if p.is_file()
    }
    assert set(sums) == files
    for rel, digest in sums.items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest, rel
    assert sum((root / f).stat().st_size for f in files) < 5_000_000
    laion = pq.read_table(root / "laion" / "sample.parquet").to_pylist()
    shard = pq.read_table(root / "shards" / "00000.parquet").to_pylist()
    with tarfile.open(root / "shards" / "00000.tar") as tar:
        names = tar.getnames()
    assert len(laion) == len(shard) == len(names) // 3 >= 300
    assert [r["URL"] for r in laion] == [r["url"] for r in shard]
    assert {n.split(".")[0] for n in names} == {r["key"] for r in shard}
    n = len(laion)
    assert 0.03 * n <= sum(r["embedded_optout"] is not None for r in laion) <= 0.07 * n
    assert 0.2 * n <= sum(r["rehosted"] for r in laion) <= 0.4 * n
    assert len({r["URL"].split("/")[2] for r in laion}) >= 5


@pytest.mark.slow
@pytest.mark.skipif(not Path(sample.SOURCE_ROOT).is_dir(), reason="needs Debian's openclipart-png")
def test_build_5000_from_debian(tmp_path: Path) -> None:
    summary = sample.build(tmp_path, n=5000)
    assert summary["rows"] == 5000 and summary["families"] > 50


def test_scan_skips_huge_and_non_png(fake_root: Path, tmp_path: Path) -> None:
    everything = sample.scan(fake_root)
    assert len(everything) == 45 and sum(s.rel != s.real for s in everything) == 1
    small = sample.scan(fake_root, max_pixels=100 * 100)
    assert small and len(small) < len(everything)
    for s in small:
        with Image.open(fake_root / s.real) as im:
            assert im.width * im.height <= 100 * 100
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "fake_01.png").write_bytes(b"GIF89a not a png")
    with pytest.raises(AuditError, match="no PNG files"):
        sample.scan(tmp_path)
