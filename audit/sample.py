"""Build a small real image-text sample, shaped the way LAION data arrives, from Debian's clip art.

Debian's `openclipart-png` package holds ~6,900 public-domain PNGs named
`<category>/<...>/<title>_<author>_NN.png` (title and author often cut to 24 characters).
`build` picks `n` of them deterministically, shrinks them, and writes them twice, like a
LAION download: the metadata parquet (`laion/sample.parquet`, laion2B columns) and the
img2dataset webdataset output for the same rows (`shards/00000.tar` + `00000.parquet`).

What is real: pictures, file names, categories, licence. What is synthetic and why (the
bundled README says the same): image URLs and openclipart ids (Debian does not ship them),
a share of rows re-hosted on mirror hosts under reserved example domains (so domain
statistics and domain opt-outs have something to act on), and IPTC PLUS data-mining
opt-out signals embedded as XMP in ~5% of the images (so the consent stage has planted
answers; `embedded_optout` records which). Numbered variants (`_01`.._04`) are kept as
whole families and a few Debian symlinks (one picture filed under two categories) become
exact-duplicate rows, so the duplicate checks have real things to find.

    >>> from audit import sample
    >>> sample.build("/tmp/sample5k", n=5000)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import struct
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.progress import track
from audit.workspace import atomic_path, atomic_write_parquet, atomic_write_text, sha256_file

SOURCE_ROOT = "/usr/share/openclipart/png"
BUNDLED = Path(__file__).parent / "data" / "sample"
# /usr/share/doc/openclipart-png/copyright: "creative commons Public Domain Dedication".
LICENSE = "https://creativecommons.org/licenses/publicdomain/"
PLUS_NS = "http://ns.useplus.org/ldf/xmp/1.0/"
DMI = "http://ns.useplus.org/ldf/vocab/"
# Planted opt-out values, cycled in this order (prohibitions outnumber the neutral ones).
OPTOUT_CYCLE = (
    "DMI-PROHIBITED-AIMLTRAINING",
    "DMI-PROHIBITED-GENAIMLTRAINING",
    "DMI-PROHIBITED",
    "DMI-PROHIBITED-AIMLTRAINING",
    "DMI-ALLOWED",
    "DMI-PROHIBITED-GENAIMLTRAINING",
    "DMI-UNSPECIFIED",
)
# Synthetic re-hosts, all under RFC 2606 reserved domains: (weight, image url, page url).
MIRRORS = (
    (
        4,
        "https://cdn.clipart-mirror.example.com/{cat}/{stem}.{ext}",
        "https://www.clipart-mirror.example.com/{cat}/{slug}.html",
    ),
    (
        3,
        "https://img.pictures.example.org/i/{h2}/{h8}.{ext}",
        "https://pictures.example.org/p/{h8}",
    ),
    (
        2,
        "https://www.example.net/blog/wp-content/uploads/20{yy}/{mm}/{stem}.{ext}",
        "https://www.example.net/blog/20{yy}/{mm}/{slug}/",
    ),
    (
        1,
        "https://media.example.com/free-clipart/{slug}.{ext}",
        "https://example.com/free-clipart/{slug}",
    ),
)
# Authors whose names recur in the file names (longest form seen there). A file's author is
# the part of its name that matches one of these, cut exactly as the file name cuts it.
AUTHORS = (
    "architetto_francesc",
    "benji_park",
    "nicu_buculei",
    "peterm",
    "jarno_vasamaa",
    "gerald_g.",
    "juliane_krug",
    "linda_kim",
    "mimooh",
    "mateya",
    "yves_guillou",
    "jon_phillips",
    "dan_gerhards",
    "frouke",
    "dave_pena",
    "enrique_meza_c",
    "fudriot_omic.ch",
    "romus",
    "susan_park",
    "christoph_brill",
    "toh_yen_cheng",
    "dirk_struve",
    "nathan_eady",
    "stefan_bazelkov",
    "marcelo_staudt",
    "leif_lodahl",
    "tanguy_jacq",
    "guillaume_boitel",
    "anthony_liekens",
    "charles_mccolm",
    "frederic_moser",
    "aj_ashton",
    "costea_bogdan",
    "mauro_olivo",
    "brice_boyer",
    "ganson",
    "rory_mccann",
    "kurt_cagle",
    "orlando_karam",
    "jasper_van_de_grond",
    "alex_kuehne",
    "lumen_desig",
    "joel_montes_d",
    "matthew_gates",
    "jonathan_dietrich",
    "arjen_meijer",
    "a.j._ashton",
    "gabrielle_nowicki",
    "cedric_bosdonnat",
    "kilian_valkhof",
    "roman_bertle",
    "matt_todd",
    "anton_yu",
    "patricia_fidi",
    "astrid_graeber",
    "alex_fernandez",
    "tess_brady",
)
TRUNCATED = 24  # Debian cut "<title>_<author>" to this many characters
MAX_PIXELS = 16_000_000  # 17 Debian files are larger (up to 623 Mpx); they are skipped
SAMPLES_PER_SHARD = 10_000  # img2dataset's default; keys are 5-digit shard + 4-digit index


@dataclass(frozen=True)
class Source:
    """One picture of the source tree. `rel` is its path (an alias when a symlink)."""

    rel: str
    real: str  # path of the file itself, relative to the root
    family: str  # dir + name without the trailing variant number


def split_name(stem: str) -> tuple[str, str | None]:
    """`'acquila_architetto_franc_01'` -> `('acquila', 'architetto franc')`; author None if unknown."""
    base = re.sub(r"[_-]?\d+$", "", stem).rstrip("_") or stem
    for author in sorted(AUTHORS, key=len, reverse=True):
        for cut in range(len(author), 2, -1):
            # a cut name only counts when the file name was cut too
            if cut < len(author) and len(base) != TRUNCATED:
                break
            tail = "_" + author[:cut]
            if base.endswith(tail) and len(base) > len(tail):
                return base[: -len(tail)].replace("_", " ").strip(), author[:cut].replace("_", " ")
    return base.replace("_", " ").strip(), None


def scan(
    source_root: str | os.PathLike[str] = SOURCE_ROOT, max_pixels: int = MAX_PIXELS
) -> list[Source]:
    """Every PNG under `source_root` (symlinks included, as aliases), in sorted order.

    Files that are not PNGs or have more than `max_pixels` pixels (a few posters of 16000 px
    and more, which would take gigabytes to decode) are left out.
    """
    root = Path(source_root)
    if not root.is_dir():
        raise AuditError(
            f"{root} does not exist: install Debian's openclipart-png "
            "(apt-get install openclipart-png) or pass --source-root"
        )
    out = []
    for path in sorted(root.rglob("*.png")):
        rel = path.relative_to(root).as_posix()
        real = path.resolve()
        if not real.is_file() or not real.is_relative_to(root.resolve()):
            continue
        with open(real, "rb") as f:
            head = f.read(24)
        if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
            continue
        width, height = struct.unpack(">II", head[16:24])
        if width * height > max_pixels:
            continue
        family = (
            path.parent.relative_to(root).as_posix() + "/" + re.sub(r"[_-]?\d+$", "", path.stem)
        )
        out.append(Source(rel, real.relative_to(root.resolve()).as_posix(), family))
    if not out:
        raise AuditError(
            f"no PNG files under {root}: pass --source-root pointing at openclipart's png/"
        )
    return out


def choose(
    sources: list[Source],
    n: int,
    seed: int = 0,
    family_share: float = 0.3,
    alias_pairs: int | None = None,
    max_family: int = 6,
) -> list[Source]:
    """Pick `n` rows: whole numbered families (~`family_share`), alias pairs, then singles by category."""
    rng = random.Random(seed)
    files = [s for s in sources if s.rel == s.real]
    families: dict[str, list[Source]] = {}
    for s in files:
        families.setdefault(s.family, []).append(s)
    by_rel = {s.rel: s for s in files}
    singles = [s for s in files if len(families[s.family]) == 1]
    aliases = [
        a
        for a in sources
        if a.rel != a.real and a.real in by_rel and len(families[by_rel[a.real].family]) == 1
    ]
    groups = [g for g in families.values() if 2 <= len(g) <= max_family]
    rng.shuffle(groups)
    rng.shuffle(aliases)
    chosen: list[Source] = []
    pairs = max(1, n // 50) if alias_pairs is None else alias_pairs
    used: set[str] = set()
    for a in aliases:
        if pairs == 0 or len(chosen) + 2 > n:
            break
        if a.real not in used:
            chosen += [by_rel[a.real], a]
            used.add(a.real)
            pairs -= 1
    budget = round(family_share * n)
    for g in groups:
        if len(g) <= budget and len(chosen) + len(g) <= n:
            chosen += g
            budget -= len(g)
    # singles: round-robin over top-level categories so small categories are not drowned out
    by_cat: dict[str, list[Source]] = {}
    for s in singles:
        if s.rel not in used:
            by_cat.setdefault(s.rel.split("/")[0], []).append(s)
    cats = sorted(by_cat)
    rng.shuffle(cats)
    for c in cats:
        rng.shuffle(by_cat[c])
    while len(chosen) < n and any(by_cat.values()):
        for c in cats:
            if by_cat[c] and len(chosen) < n:
                chosen.append(by_cat[c].pop())
    if len(chosen) < n:
        raise AuditError(
            f"only {len(chosen)} pictures can be chosen from the source tree; use --n {len(chosen)} or less"
        )
    rng.shuffle(chosen)  # duplicates are scattered in real data, not adjacent
    return chosen


def shrink(
    data: bytes, max_side: int = 256, png_max_bytes: int = 12_000, jpeg_quality: int = 85
) -> tuple[bytes, str, int, int, str]:
    """Resize so the longer side <= max_side; keep PNG (alpha too) if small, else JPEG on white.

    Returns (bytes, "png"|"jpg", width, height, description of what was done).
    """
    from PIL import Image

    im: Any = Image.open(io.BytesIO(data))
    ow, oh, omode = im.width, im.height, im.mode
    has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    im = im.convert("RGBA" if has_alpha else "RGB")
    steps = [f"debian {ow}x{oh} {omode} png"]
    if max(ow, oh) > max_side:
        scale = max_side / max(ow, oh)
        im = im.resize(
            (max(1, round(ow * scale)), max(1, round(oh * scale))), Image.Resampling.LANCZOS
        )
        steps.append(f"resized to {im.width}x{im.height} (lanczos)")
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    if buf.tell() <= png_max_bytes:
        steps.append("png" + (" with alpha" if has_alpha else ""))
        return buf.getvalue(), "png", im.width, im.height, ", ".join(steps)
    if has_alpha:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im).convert("RGB")
        steps.append("alpha flattened on white")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=jpeg_quality, optimize=True)
    steps.append(f"jpeg q{jpeg_quality}")
    return buf.getvalue(), "jpg", im.width, im.height, ", ".join(steps)


def xmp_packet(value: str, element_form: bool = False) -> bytes:
    """An XMP packet carrying IPTC PLUS `plus:DataMining` = `DMI + value` (attribute or element form)."""
    uri = DMI + value
    if element_form:
        desc = (
            f'<rdf:Description rdf:about="" xmlns:plus="{PLUS_NS}">\n'
            f"   <plus:DataMining>{uri}</plus:DataMining>\n  </rdf:Description>"
        )
    else:
        desc = f'<rdf:Description rdf:about="" xmlns:plus="{PLUS_NS}" plus:DataMining="{uri}"/>'
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        f"  {desc}\n </rdf:RDF>\n</x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    ).encode()


def embed_xmp(data: bytes, fmt: str, xmp: bytes) -> bytes:
    """Insert `xmp` as a PNG iTXt `XML:com.adobe.xmp` chunk or a JPEG APP1 segment, after the header."""
    if fmt == "png":
        # iTXt: keyword \0, compression flag 0, method 0, language "" \0, translated "" \0, text
        body = b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp
        chunk = struct.pack(">I", len(body)) + b"iTXt" + body
        chunk += struct.pack(">I", zlib.crc32(chunk[4:]) & 0xFFFFFFFF)
        ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, crc
        return data[:ihdr_end] + chunk + data[ihdr_end:]
    payload = b"http://ns.adobe.com/xap/1.0/\x00" + xmp
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    at = 2
    if data[2:4] == b"\xff\xe0":  # keep JFIF APP0 first
        at = 4 + struct.unpack(">H", data[4:6])[0]
    return data[:at] + segment + data[at:]


def _urls(
    src: Source, title: str, fmt: str, rng: random.Random, mirror_share: float
) -> tuple[str, str, bool]:
    """(image url, page url, re-hosted?) of the shape a crawl would record."""
    h = hashlib.sha256(src.real.encode()).hexdigest()
    stem = Path(src.rel).stem
    slug = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")
    if rng.random() >= mirror_share:
        oc_id = int(h[:8], 16) % 999_983 + 1  # synthetic: Debian does not ship openclipart ids
        return (
            f"https://openclipart.org/image/800px/svg_to_png/{oc_id}/{stem}.png",
            f"https://openclipart.org/detail/{oc_id}/{slug}",
            False,
        )
    weights = [m[0] for m in MIRRORS]
    _, image, page = rng.choices(MIRRORS, weights=weights)[0]
    fields = dict(
        cat=src.rel.split("/")[0],
        stem=stem,
        slug=slug,
        ext=fmt,
        h2=h[:2],
        h8=h[:8],
        yy=f"{10 + int(h[8:10], 16) % 14:02d}",
        mm=f"{1 + int(h[10:12], 16) % 12:02d}",
    )
    return image.format(**fields), page.format(**fields), True


def build(
    out_dir: str | os.PathLike[str] = BUNDLED,
    n: int = 300,
    seed: int = 0,
    source_root: str | os.PathLike[str] = SOURCE_ROOT,
    max_side: int = 256,
    optout_share: float = 0.05,
    mirror_share: float = 0.3,
    family_share: float = 0.3,
    png_max_bytes: int = 12_000,
    jpeg_quality: int = 85,
) -> dict[str, Any]:
    """Write `n` sample rows to `out_dir` (laion/, shards/, README.md); returns a summary.

    Replaces what an earlier build wrote there (including surplus `shards/NNNNN*` files).

    Same arguments and source tree -> the same bytes.

        >>> build("/tmp/sample5k", n=5000)  # doctest: +SKIP
    """
    import pyarrow as pa

    if n < 1:
        raise AuditError(f"--n must be at least 1, got {n}")
    if max_side < 16:
        raise AuditError(f"--max-side must be at least 16 pixels, got {max_side}")
    root = Path(source_root)
    rows = choose(scan(root), n, seed=seed, family_share=family_share)
    rng = random.Random(f"{seed}-rows")
    flagged = set(rng.sample(range(n), round(optout_share * n)))
    out = Path(out_dir)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    for stale in (out / "shards").glob("[0-9][0-9][0-9][0-9][0-9]*"):  # from a larger earlier build
        stale.unlink()
    records: list[dict[str, Any]] = []
    nflag = 0
    for i, src in enumerate(track(rows, total=n, description="sample")):
        try:
            data, fmt, w, h, how = shrink(
                (root / src.real).read_bytes(), max_side, png_max_bytes, jpeg_quality
            )
        except (OSError, ValueError) as e:  # PIL raises these for broken files
            raise AuditError(
                f"cannot read {root / src.real}: {e}; remove it or try another --seed"
            ) from e
        optout = None
        if i in flagged:
            optout = OPTOUT_CYCLE[nflag % len(OPTOUT_CYCLE)]
            data = embed_xmp(data, fmt, xmp_packet(optout, element_form=nflag % 2 == 1))
            how += f", xmp plus:DataMining {optout} added (synthetic)"
            nflag += 1
        title, author = split_name(Path(src.rel).stem)
        category = str(Path(src.rel).parent).replace("/", " / ")
        url, page_url, rehosted = _urls(src, title, fmt, rng, mirror_share)
        by = f" by {author}" if author else ""
        caption = f"{title} clip art{by} ({category.replace('_', ' ')})"
        records.append(
            dict(
                key=f"{i // SAMPLES_PER_SHARD:05d}{i % SAMPLES_PER_SHARD:04d}",
                url=url,
                caption=caption,
                width=w,
                height=h,
                sha256=hashlib.sha256(data).hexdigest(),
                fmt=fmt,
                data=data,
                title=title,
                author=author,
                category=category,
                license=LICENSE,
                page_url=page_url,
                source_file=f"{root.as_posix()}/{src.rel}",
                transform=how,
                embedded_optout=optout,
                rehosted=rehosted,
            )
        )
    laion = pa.table(
        {
            "URL": [r["url"] for r in records],
            "TEXT": [r["caption"] for r in records],
            "WIDTH": pa.array([r["width"] for r in records], pa.int64()),
            "HEIGHT": pa.array([r["height"] for r in records], pa.int64()),
            "similarity": pa.nulls(n, pa.float64()),
            "punsafe": pa.nulls(n, pa.float64()),
            "pwatermark": pa.nulls(n, pa.float64()),
            # laion2B's `hash` is an int64 of url+text; ours is the first 8 bytes of their sha256
            "hash": pa.array(
                [
                    struct.unpack(
                        ">q", hashlib.sha256(f"{r['url']}\t{r['caption']}".encode()).digest()[:8]
                    )[0]
                    for r in records
                ],
                pa.int64(),
            ),
            "LANGUAGE": ["en"] * n,
            "LICENSE": [r["license"] for r in records],
            **_extra_columns(records),
        }
    )
    atomic_write_parquet(out / "laion" / "sample.parquet", laion)
    shards = [records[s : s + SAMPLES_PER_SHARD] for s in range(0, n, SAMPLES_PER_SHARD)]
    for number, shard in enumerate(shards):
        _write_shard(out / "shards" / f"{number:05d}", shard)
    files = [out / "laion" / "sample.parquet"] + sorted(
        out / "shards" / name
        for k in range(len(shards))
        for name in (f"{k:05d}.tar", f"{k:05d}.parquet", f"{k:05d}_stats.json")
    )
    summary = dict(
        rows=n,
        seed=seed,
        max_side=max_side,
        shards=len(shards),
        png=sum(r["fmt"] == "png" for r in records),
        jpg=sum(r["fmt"] == "jpg" for r in records),
        rehosted=sum(r["rehosted"] for r in records),
        embedded_optout=nflag,
        families=sum(k > 1 for k in Counter(s.family for s in rows).values()),
        alias_rows=sum(s.rel != s.real for s in rows),
        categories=len({r["category"].split(" / ")[0] for r in records}),
        bytes=sum(p.stat().st_size for p in files),
        sha256={p.relative_to(out).as_posix(): sha256_file(p) for p in files},
    )
    command = (
        f"audit sample build --n {n} --seed {seed} --max-side {max_side} "
        f"--out {'audit/data/sample' if out.resolve() == BUNDLED.resolve() else out}"
    )
    atomic_write_text(out / "README.md", _readme(summary, records, command))
    return summary


def _extra_columns(records: list[dict[str, Any]]) -> dict[str, Any]:
    import pyarrow as pa

    cols = ("title", "author", "category", "page_url", "source_file", "transform")
    extra: dict[str, Any] = {c: pa.array([r[c] for r in records], pa.string()) for c in cols}
    extra["embedded_optout"] = pa.array([r["embedded_optout"] for r in records], pa.string())
    extra["rehosted"] = pa.array([r["rehosted"] for r in records], pa.bool_())
    return extra


def _write_shard(stem: Path, shard: list[dict[str, Any]]) -> None:
    """img2dataset webdataset output: `key.{jpg,png}`, `key.txt`, `key.json` per row, plus parquet."""
    import pyarrow as pa

    m = len(shard)
    with (
        atomic_path(stem.with_suffix(".tar")) as tmp,
        tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for r in shard:
            meta = {
                "url": r["url"],
                "caption": r["caption"],
                "key": r["key"],
                "status": "success",
                "error_message": None,
                "width": r["width"],
                "height": r["height"],
                "original_width": r["width"],
                "original_height": r["height"],
                "exif": None,
                "sha256": r["sha256"],
                "title": r["title"],
                "author": r["author"],
                "category": r["category"],
                "license": r["license"],
                "page_url": r["page_url"],
            }
            for name, payload in (
                (f"{r['key']}.{r['fmt']}", r["data"]),
                (f"{r['key']}.txt", r["caption"].encode()),
                (f"{r['key']}.json", json.dumps(meta, indent=4).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(payload), 1_600_000_000, 0o644
                tar.addfile(info, io.BytesIO(payload))
    ints = {c: pa.array([r[c] for r in shard], pa.int64()) for c in ("width", "height")}
    table = pa.table(
        {
            "key": [r["key"] for r in shard],
            "url": [r["url"] for r in shard],
            "caption": [r["caption"] for r in shard],
            **ints,
            "original_width": ints["width"],
            "original_height": ints["height"],
            "status": ["success"] * m,
            "error_message": pa.nulls(m, pa.string()),
            "sha256": [r["sha256"] for r in shard],
            "exif": pa.nulls(m, pa.string()),
            "license": [r["license"] for r in shard],
            **_extra_columns(shard),
        }
    )
    atomic_write_parquet(stem.with_suffix(".parquet"), table)
    stats = {
        "count": m,
        "successes": m,
        "failed_to_download": 0,
        "failed_to_resize": 0,
        "status_dict": {"success": m},
    }
    atomic_write_text(Path(f"{stem}_stats.json"), json.dumps(stats, indent=4) + "\n")


def _readme(summary: dict[str, Any], records: list[dict[str, Any]], command: str) -> str:
    n = summary["rows"]
    cats = Counter(r["category"].split(" / ")[0] for r in records)
    hosts = Counter(r["url"].split("/")[2] for r in records)
    optouts = Counter(r["embedded_optout"] for r in records if r["embedded_optout"])
    sums = "\n".join(f"{h}  {p}" for p, h in summary["sha256"].items())
    return f"""# Bundled sample: {n} public-domain clip-art pictures, shaped like a LAION download

Built by `{command}` from Debian's `openclipart-png`
(`/usr/share/openclipart/png`). Same seed, arguments and package version give the same bytes.
A larger one: `audit sample build --n 5000 --out /tmp/sample5k` (any n up to ~6,000).

## Source and licence
The pictures come from openclipart.org via Debian's `openclipart-png` package. Its copyright
file (`/usr/share/doc/openclipart-png/copyright`) puts them under the Creative Commons Public
Domain Dedication / Certification; every row carries `LICENSE` = `{LICENSE}`.
Titles, authors and categories come from the Debian file names and folders only
(`<category>/.../<title>_<author>_NN.png`, cut by Debian to {TRUNCATED} characters, so
`architetto franc` is really a truncated name). `author` is filled only when the file name
ends with a name that recurs across many files (list `AUTHORS` in `audit/sample.py`), else null.
Captions are made from these and nothing else: `<title> clip art by <author> (<category>)`.

## How rows were chosen (`audit.sample.choose`)
- {summary["alias_rows"]} Debian symlinks (one picture filed under two categories) with their targets:
  exact-duplicate pictures under two captions/URLs.
- Whole numbered-variant families (`name_01.png` .. `name_04.png`, 2-6 members), about 30% of rows:
  {summary["families"]} families with 2+ members in all, natural near-duplicates.
- The rest one per family, round-robin over top-level categories ({summary["categories"]} categories):
  {", ".join(f"{c} {k}" for c, k in sorted(cats.items()))}.
- Row order shuffled (seed {summary["seed"]}), so duplicates are not adjacent.

## What was done to the pictures (column `transform` says it per row)
Resized (Lanczos) so the longer side is at most {summary["max_side"]} px. Kept as PNG (alpha kept)
when that is at most 12 KB, otherwise flattened on white and saved as JPEG quality 85, which keeps
the sample a few MB: {summary["png"]} PNG, {summary["jpg"]} JPEG. `WIDTH`/`HEIGHT` are of the stored bytes.

## What is synthetic, and why
- **URLs and ids.** Debian ships no URLs, so image URLs have the shape
  `https://openclipart.org/image/800px/svg_to_png/<id>/<file>.png` with page
  `https://openclipart.org/detail/<id>/<slug>` (column `page_url`); `<id>` is derived from a hash
  of the file path, not openclipart's real id.
- **Mirror hosts.** About 30% of rows ({summary["rehosted"]}, column `rehosted`) are re-hosted on
  made-up mirrors under the reserved example domains of RFC 2606 (example.com / .org / .net), so
  domain statistics and domain-level opt-outs have several hosts and subdomains to act on. Rows
  per host: {", ".join(f"{h} {k}" for h, k in sorted(hosts.items()))}.
- **Embedded opt-outs.** {summary["embedded_optout"]} rows (~5%) carry an XMP packet with an IPTC PLUS
  `plus:DataMining` value (`xmlns:plus="{PLUS_NS}"`), in a PNG `iTXt` chunk
  `XML:com.adobe.xmp` or a JPEG APP1 `http://ns.adobe.com/xap/1.0/` segment, alternately in attribute
  and element form. We added them to exercise the consent stage; the authors did not. Column
  `embedded_optout` (sample only, ground truth for tests) says which value each row got:
  {", ".join(f"{v} {k}" for v, k in sorted(optouts.items()))}.
- LAION's `similarity`, `punsafe`, `pwatermark` are null; `hash` is an int64 of sha256(url, text);
  `LANGUAGE` is `en`.

## Files
- `laion/sample.parquet`: laion2B-style metadata: `URL, TEXT, WIDTH, HEIGHT, similarity, punsafe,
  pwatermark, hash, LANGUAGE, LICENSE` + `title, author, category, page_url, source_file, transform,
  embedded_optout, rehosted`.
- `shards/00000.tar`: img2dataset webdataset output for the same rows in the same order: per row
  `<key>.png|jpg`, `<key>.txt` (caption), `<key>.json` (url, caption, key, status, error_message,
  width, height, original_width, original_height, exif, sha256, title, author, category, license,
  page_url). `key` is 9 digits: shard (5) + index (4).
- `shards/00000.parquet`: img2dataset columns `key, url, caption, width, height, original_width,
  original_height, status, error_message, sha256, exif, license` + the extra columns above.
- `shards/00000_stats.json`: img2dataset-style counts.

Total {summary["bytes"] / 1e6:.2f} MB. sha256:

```
{sums}
```
"""
