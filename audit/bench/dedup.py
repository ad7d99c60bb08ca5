"""Duplicate-cluster precision and recall on planted near-duplicates, beside imagededup.

Data: random openclipart PNGs (Debian openclipart-png, seed 2028), composited on white (as
`audit` decodes them; imagededup would otherwise turn transparent pixels black and never
match a JPEG copy) and scaled to at most 512 px on the longest side, saved as PNG. The base
set is deduplicated first: openclipart holds pixel-identical pictures under different names,
so a picture whose flattened pixels equal an earlier one's is skipped; so is a picture of
the same size whose pixels are closer (RMS) to an earlier pick than that pick's own JPEG
quality-50 re-encode is (17% of openclipart is one series of star polygons rendered at
100 px, many of them the same grey ring to the pixel, within JPEG noise). Both counts are
recorded. Then one near-duplicate is planted for every tenth base image, cycling through
three edits: JPEG quality 50, half size, a one-pixel black line across the picture. Files
get neutral names in shuffled order.

Truth: the planted (original, copy) pairs. A found pair is any two rows of one `audit dedup`
cluster (clusters are complete-linkage, so every such pair is claimed), or any pair
imagededup's `PHash.find_duplicates(max_distance_threshold=10)` reports. Pairs between two
base images are false by this truth, though some are near-identical originals (the same
drawing re-exported, star polygons a tenth of a pixel apart); their count is shown
separately, and the openclipart names of the verified run's false pairs are listed, so a
reader can judge. The verifier's thresholds were read off seeds 7 and 8; this run's seed
is another (`--seed` to change it).

Runs, in one process on the same files: `audit hash` + `audit dedup` (pixel-verified, the
default), `audit dedup --no-verify` (hashes alone, same complete linkage), imagededup PHash.
Both tools use 2 worker processes for hashing. Quick mode: 1,000 base images.

Cache: building the base set (decoding ~6,000 openclipart files and the JPEG-noise test over
the star series) takes ~20 minutes at 5,000 images, so the built base PNGs, skip counts and
names are kept under `<cache>/base-s<seed>-n<n>-<version>/` (`--cache DIR`, default
`~/.cache/audit-bench`; never inside the repository). `<version>` hashes the source of the
functions that build it (`_base_set`, `_within_noise`, `_jpeg_rms`, `audit.images.decode`),
`MAX_SIDE` and the openclipart file list, so a change to any of them builds afresh. Copies,
shuffling, truth and every run are made anew each time; `seconds_to_build` says whether the
base set came from the cache (`base_set_from_cache`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from itertools import combinations
from pathlib import Path
from typing import Any

EDITS = ("jpeg_q50", "half_size", "line")
MAX_SIDE = 512
MAX_LISTED = 60  # false pairs listed by name in the report
GOAL = {"precision": 0.95, "recall": 0.90}
# The verifier's thresholds were read off seeds 7 and 8 (`TUNING_SEEDS`); the recorded run
# uses another seed, so its numbers are on pictures the thresholds never saw.
SEED = 2028
TUNING_SEEDS = (7, 8)


def _jpeg_rms(x: Any) -> float:
    """RMS change a JPEG quality-50 re-encode makes to the RGB uint8 array x."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=50)
    j = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), np.float32)
    return float(np.sqrt(((x.astype(np.float32) - j) ** 2).mean()))


def _within_noise(x: Any, earlier: list[tuple[Any, float]]) -> bool:
    """x (RGB uint8) is closer (RMS) to an earlier pick of its size than that pick's own JPEG
    q50 re-encode is to it: the same picture for any pixel comparison."""
    import numpy as np

    xf = x.astype(np.float32)
    for s in range(0, len(earlier), 64):  # 64 picks at a time: bounded memory, numpy speed
        chunk = earlier[s : s + 64]
        stack = np.stack([e for e, _ in chunk])
        rms = np.sqrt(((stack - xf) ** 2).reshape(len(chunk), -1).mean(axis=1))
        if np.any(rms <= np.array([noise for _, noise in chunk])):
            return True
    return False


def _base_set(tmp: Path, n: int, seed: int) -> tuple[list[Path], dict[str, int], list[str]]:
    """n distinct openclipart pictures flattened on white as PNG; how many were skipped
    (pixel-identical to an earlier pick, or within its JPEG q50 noise); each one's name."""
    import numpy as np
    from PIL import Image

    from audit.bench.descriptors import OPENCLIPART
    from audit.images import MAX_DECODE_PIXELS, decode

    pool = sorted(OPENCLIPART.rglob("*.png"))
    random.Random(seed).shuffle(pool)
    seen: set[Any] = set()
    by_size: dict[tuple[int, int], list[tuple[Any, float]]] = {}
    out: list[Any] = []
    names: list[str] = []
    skipped = {"pixel_identical": 0, "within_jpeg_noise": 0}
    for f in pool:
        if len(out) == n:
            break
        with Image.open(f) as im:
            if im.size[0] * im.size[1] > MAX_DECODE_PIXELS:  # `decode` refuses these
                continue
        img = decode(f.read_bytes())
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        key = hashlib.sha256(img.tobytes() + repr(img.size).encode()).hexdigest()
        if key in seen:
            skipped["pixel_identical"] += 1
            continue
        x = np.asarray(img.convert("RGB"), np.uint8)
        same = by_size.setdefault(img.size, [])
        if _within_noise(x, same):
            skipped["within_jpeg_noise"] += 1
            continue
        seen.add(key)
        same.append((x.astype(np.float32), _jpeg_rms(x)))
        path = tmp / f"base-{len(out):05d}.png"
        img.save(path, compress_level=1)
        out.append(path)
        names.append(str(f.relative_to(OPENCLIPART)))
    return out, skipped, names


CACHE = Path.home() / ".cache" / "audit-bench"


def _base_version(pool: list[Path]) -> str:
    """Hash of what decides the base set: the building code, MAX_SIDE and the file list."""
    import inspect

    from audit import images

    h = hashlib.sha256()
    for fn in (_base_set, _within_noise, _jpeg_rms, images.decode):
        h.update(inspect.getsource(fn).encode())
    h.update(repr((MAX_SIDE, images.MAX_DECODE_PIXELS, [str(f) for f in pool])).encode())
    return h.hexdigest()[:12]


def _cached_base_set(
    tmp: Path, n: int, seed: int, cache: Path | None
) -> tuple[list[Path], dict[str, int], list[str], bool]:
    """`_base_set`, kept under `cache` (None: no cache); the last item: it came from there."""
    import shutil

    from audit.bench.descriptors import OPENCLIPART

    if cache is None:
        return (*_base_set(tmp, n, seed), False)
    entry = Path(cache) / f"base-s{seed}-n{n}-{_base_version(sorted(OPENCLIPART.rglob('*.png')))}"
    meta = entry / "base.json"
    if not meta.is_file():
        entry.parent.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
        paths, skipped, names = _base_set(build, n, seed)
        (build / "base.json").write_text(
            json.dumps({"files": [p.name for p in paths], "skipped": skipped, "names": names})
        )
        try:
            build.rename(entry)  # atomic: a concurrent or interrupted build leaves no half entry
        except OSError:
            shutil.rmtree(build, ignore_errors=True)  # another process built it first
        from_cache = False
    else:
        from_cache = True
    m = json.loads(meta.read_text())
    out = []
    for name in m["files"]:
        shutil.copyfile(entry / name, tmp / name)
        out.append(tmp / name)
    return out, m["skipped"], m["names"], from_cache


def _plant(img: Any, edit: str, rng: random.Random, path: Path) -> Path:
    from PIL import Image, ImageDraw

    if edit == "jpeg_q50":
        path = path.with_suffix(".jpg")
        img.save(path, quality=50)
        return path
    if edit == "half_size":
        w, h = img.size
        img = img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS)
    else:  # a one-pixel line from the left edge to the right edge, at random heights
        img = img.copy()
        w, h = img.size
        ImageDraw.Draw(img).line(
            [(0, rng.randrange(h)), (w - 1, rng.randrange(h))], fill=(0, 0, 0), width=1
        )
    img.save(path, compress_level=1)
    return path


def _dataset(tmp: Path, n: int, seed: int = 7, cache: Path | None = None) -> dict[str, Any]:
    """Shuffled files, the truth pairs (file indices) and the edit of each planted copy."""
    from PIL import Image

    base, skipped, names, from_cache = _cached_base_set(tmp, n, seed, cache)
    rng = random.Random(seed + 1)
    originals = rng.sample(range(len(base)), len(base) // 10)
    copies = []
    for k, i in enumerate(originals):
        edit = EDITS[k % len(EDITS)]
        with Image.open(base[i]) as im:
            copies.append(
                (i, edit, _plant(im.convert("RGB"), edit, rng, tmp / f"copy-{k:05d}.png"))
            )
    files = base + [p for _, _, p in copies]
    order = list(range(len(files)))
    rng.shuffle(order)  # neutral names in a random order: row ids say nothing
    named = []
    for new, old in enumerate(order):
        target = tmp / f"img-{new:05d}{files[old].suffix}"
        files[old].rename(target)
        named.append(target)
    pos = {old: new for new, old in enumerate(order)}
    truth = {}
    for k, (i, edit, _) in enumerate(copies):
        a, b = pos[i], pos[len(base) + k]
        truth[(min(a, b), max(a, b))] = edit
    is_base = [order[new] < len(base) for new in range(len(files))]
    # the openclipart name behind each file (a copy: its original's), to describe false pairs
    source = [names[old] if old < len(base) else names[copies[old - len(base)][0]] for old in order]
    return {
        "files": named,
        "truth": truth,
        "is_base": is_base,
        "skipped": skipped,
        "source": source,
        "from_cache": from_cache,
    }


def _score(found: set[tuple[int, int]], data: dict[str, Any], seconds: float) -> dict[str, Any]:
    truth, is_base = data["truth"], data["is_base"]
    tp = found & set(truth)
    false = found - tp
    out = {
        "pairs_found": len(found),
        "true_pairs_found": len(tp),
        "precision": round(len(tp) / len(found), 4) if found else None,
        "recall": round(len(tp) / len(truth), 4),
        "false_pairs_between_base_images": sum(is_base[a] and is_base[b] for a, b in false),
        "seconds": round(seconds, 1),
    }
    for edit in EDITS:
        planted = [p for p, e in truth.items() if e == edit]
        out[f"recall_{edit}"] = round(sum(p in found for p in planted) / len(planted), 4)
    # which pictures the false pairs join (openclipart names), for the reader to look at
    names = data["source"]
    out["false_pair_examples"] = [f"{names[a]} ~ {names[b]}" for a, b in sorted(false)[:MAX_LISTED]]
    return out


def _audit(tmp: Path, data: dict[str, Any], verify: bool) -> tuple[dict[str, Any], Any]:
    import pyarrow.parquet as pq

    from audit import hashes
    from audit.bench.descriptors import _workspace
    from audit.checks import duplicates

    files = data["files"]
    ws = _workspace(tmp / f"ws-{verify}", files, [""] * len(files))
    t0 = time.perf_counter()
    hashes.compute(ws.root, workers=2, which=("phash", "dhash"))
    t_hash = time.perf_counter() - t0
    summary = duplicates.find(ws.root, verify=verify)
    seconds = time.perf_counter() - t0
    clusters: dict[int, list[int]] = {}
    for r in pq.read_table(
        ws.path("duplicates.parquet"), columns=["row_id", "cluster_id"]
    ).to_pylist():
        clusters.setdefault(r["cluster_id"], []).append(r["row_id"])
    found = {(min(a, b), max(a, b)) for m in clusters.values() for a, b in combinations(m, 2)}
    score = _score(found, data, seconds)
    score.update(
        hash_seconds=round(t_hash, 1),
        clusters=summary["clusters"],
        largest_cluster=summary["largest_cluster"],
        candidate_pairs=summary["candidate_pairs"],
        rejected_pairs=summary["rejected_pairs"],
        rejected_by=summary.get("rejected_by"),
    )
    if verify:
        score["missed_by"] = _missed_by(ws, data, found)
    return score, summary


def _missed_by(ws: Any, data: dict[str, Any], found: set[tuple[int, int]]) -> dict[str, int]:
    """Why each planted pair the verified run missed was missed, by edit: "far_hashes" (pHash
    more than 6 bits and dHash more than 10 apart: no hash proposes it), the pixel check's
    first failed test for the pair (checked again here from the files), or
    "verifies_not_clustered" (the pixels verify; the pair was not proposed, as when one code
    is shared by more rows than `duplicates.MAX_GROUP`, or linkage kept the two apart)."""
    import numpy as np

    from audit.checks.duplicates import _read_rows, verify_pairs
    from audit.images import decode
    from audit.workspace import Workspace

    rows = _read_rows(Workspace.open(ws.root), len(data["files"]))  # reopened: hashes are new
    out: dict[str, int] = {}
    for a, b in sorted(set(data["truth"]) - found):
        ph = int(np.bitwise_count(rows["phash"][a] ^ rows["phash"][b]))
        dh = int(np.bitwise_count(rows["dhash"][a] ^ rows["dhash"][b]))
        if ph > 6 and dh > 10:
            why = "far_hashes"
        else:
            ta, tb = (verify_pairs.thumbnail(decode(data["files"][k].read_bytes())) for k in (a, b))
            why = verify_pairs.compare(ta, tb).reason or "verifies_not_clustered"
        key = f"{data['truth'][(a, b)]}:{why}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def _imagededup(data: dict[str, Any]) -> dict[str, Any]:
    from imagededup.methods import PHash

    files = data["files"]
    index = {f.name: k for k, f in enumerate(files)}
    t0 = time.perf_counter()
    phasher = PHash(verbose=False)
    enc = phasher.encode_images(image_dir=str(files[0].parent), num_enc_workers=2)
    dups = phasher.find_duplicates(encoding_map=enc, max_distance_threshold=10, num_dist_workers=2)
    seconds = time.perf_counter() - t0
    found = {
        (min(index[a], index[b]), max(index[a], index[b]))
        for a, others in dups.items()
        for b in others
        if a in index and b in index
    }
    return _score(found, data, seconds)


def run(
    out_dir: Path, quick: bool = False, seed: int = SEED, cache: Path | None = CACHE
) -> dict[str, Any]:
    """The benchmark; `cache`: where built base sets are kept (None: build every time)."""
    os.environ.setdefault("AUDIT_NO_PROGRESS", "1")
    out_dir = Path(out_dir)
    n = 1000 if quick else int(os.environ.get("AUDIT_BENCH_DEDUP_N", "5000"))
    result: dict[str, Any] = {"quick": quick, "goal": GOAL}
    from audit.bench.descriptors import OPENCLIPART

    if not OPENCLIPART.is_dir():
        result["skipped"] = f"{OPENCLIPART} missing: apt-get install openclipart-png"
        (out_dir / "dedup.json").write_text(json.dumps(result, indent=2) + "\n")
        (out_dir / "dedup.md").write_text(f"# Duplicate clusters\n\nSkipped: {result['skipped']}\n")
        return result
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        images = tmp / "images"
        images.mkdir()
        t0 = time.perf_counter()
        data = _dataset(images, n, seed=seed, cache=cache)
        result["data"] = {
            "base_images": sum(data["is_base"]),
            "planted_copies": len(data["truth"]),
            "seed": seed,
            "skipped_pixel_identical_originals": data["skipped"]["pixel_identical"],
            "skipped_within_jpeg_noise_of_another": data["skipped"]["within_jpeg_noise"],
            "edits": ", ".join(EDITS),
            "seconds_to_build": round(time.perf_counter() - t0, 1),
            "base_set_from_cache": data["from_cache"],
        }
        result["audit_dedup_verified"], summary = _audit(tmp, data, verify=True)
        result["audit_dedup_hash_only"], _ = _audit(tmp, data, verify=False)
        result["imagededup_phash_10"] = _imagededup(data)
    best = result["audit_dedup_verified"]
    result["goal_met"] = bool(
        (best["precision"] or 0) >= GOAL["precision"] and best["recall"] >= GOAL["recall"]
    )
    result["verifier"] = summary["verifier"]
    (out_dir / "dedup.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "dedup.md").write_text(_markdown(result))
    return result


def _markdown(r: dict[str, Any]) -> str:
    runs = ("audit_dedup_verified", "audit_dedup_hash_only", "imagededup_phash_10")
    keys = [k for k in r[runs[0]] if k != "false_pair_examples"]
    lines = ["# Duplicate clusters: precision and recall on planted near-duplicates", ""]
    lines += [__doc__.strip(), ""]
    lines += ["## Data", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in r["data"].items()]
    lines += [
        "",
        f"## Results (goal: precision >= {GOAL['precision']}, recall >= "
        f"{GOAL['recall']}; met: {r['goal_met']}; verifier: {r['verifier']})",
        "",
    ]
    lines += ["| metric | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(str(r[x].get(k, "")) for x in runs) + " |")
    lines += [
        "",
        f"## False pairs of the verified run (openclipart names, up to {MAX_LISTED}; copies named by their original)",
        "",
    ]
    lines += [f"- {x}" for x in r[runs[0]]["false_pair_examples"]] or ["- none"]
    return "\n".join(lines) + "\n"
