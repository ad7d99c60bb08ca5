"""Descriptor benchmarks, candidate beside baseline in one process, on the same images:

1. `hashes.compute` (fast decode, 2 workers) on a workspace of the bundled sample's images vs
   a plain loop of `imagehash.phash(Image.open(path))` over the same files; plus the same on
   full-size openclipart PNGs when /usr/share/openclipart is installed. The candidate computes
   four hashes, the baseline one.
2. Fast vs exact decoding agreement (mean Hamming bits per hash) on those images.
3. The `embed` pipeline (decode workers + forward) vs the bare forward pass of the same model
   on already preprocessed tensors and tokens, at the same torch thread count. ViT-B-32 with
   random weights (`pretrained="none"`: the forward cost is that of the real model).
4. Near-duplicate pHash search over 1,000,000 random codes with 1,000 planted near copies
   (`duplicates.near_pairs`, radius 6) vs brute force (faiss IndexBinaryFlat range search) on
   a 20,000-code subset, extrapolated quadratically; both must agree on the subset.
Quick mode: fewer images, 64 images for the embed part, 200,000 codes.
Peak memory is the process's `ru_maxrss` after each part (monotonic, so an upper bound).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample" / "shards" / "00000.tar"
OPENCLIPART = Path("/usr/share/openclipart/png")


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _workspace(root: Path, files: list[Path], captions: list[str]) -> Any:
    """A workspace over plain image files, recorded through the base layer as ingest would."""
    import pyarrow as pa

    from audit.schema import METADATA
    from audit.workspace import Output, Workspace, atomic_write_parquet

    ws = Workspace.create(root)
    rows = []
    for i, (f, cap) in enumerate(zip(files, captions, strict=True)):
        data = f.read_bytes()
        rec = {name: None for name in METADATA.names}
        rec.update(
            row_id=i,
            key=f"{i:09d}",
            url=f"file://{f}",
            caption=cap,
            source_file=str(f),
            source_row=0,
            image_path=str(f),
            image_offset=0,
            image_size=len(data),
            image_sha256=hashlib.sha256(data).hexdigest(),
            image_status="ok",
        )
        rows.append(rec)
    run = ws.start_stage("ingest", {"sources": ["bench"]})
    atomic_write_parquet(
        ws.path("metadata/part-00000.parquet"), pa.Table.from_pylist(rows, schema=METADATA)
    )
    run.record_part(0, [Output("metadata/part-00000.parquet", len(rows), 0)])
    run.finish({"rows": len(rows)})
    return ws


def _sample_files(tmp: Path, limit: int) -> tuple[list[Path], list[str]]:
    files, captions = [], []
    with tarfile.open(SAMPLE) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for name in sorted(members):
            if name.endswith((".png", ".jpg")) and len(files) < limit:
                out = tmp / name
                out.write_bytes(tar.extractfile(members[name]).read())
                files.append(out)
                txt = members.get(name.rsplit(".", 1)[0] + ".txt")
                captions.append(tar.extractfile(txt).read().decode() if txt else "")
    return files, captions


def _bench_hash(tmp: Path, name: str, files: list[Path]) -> dict[str, Any]:
    import imagehash
    from PIL import Image

    from audit import hashes

    ws = _workspace(tmp / f"ws-{name}", files, [""] * len(files))
    t0 = time.perf_counter()
    for f in files:
        imagehash.phash(Image.open(f))
    base = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = hashes.compute(ws.root, workers=2, fast_decode=True)
    cand = time.perf_counter() - t0
    t0 = time.perf_counter()
    hashes.compute(
        _workspace(tmp / f"ws-{name}-exact", files, [""] * len(files)).root,
        workers=2,
        fast_decode=False,
    )
    exact = time.perf_counter() - t0
    return {
        "images": len(files),
        "errors": s["errors"],
        "baseline_phash_loop_s": round(base, 3),
        "candidate_fast_4_hashes_s": round(cand, 3),
        "candidate_exact_4_hashes_s": round(exact, 3),
        "speedup_fast": round(base / cand, 2),
        "speedup_exact": round(base / exact, 2),
        "candidate_rows_per_s": round(len(files) / cand, 1),
        "baseline_rows_per_s": round(len(files) / base, 1),
        "peak_rss_mb": _rss_mb(),
    }


def agreement(datas: list[bytes]) -> dict[str, float]:
    """Mean Hamming bits fast vs exact decoding, per hash, over encoded images."""
    from audit import hashes

    ex, fa = [], []
    for d in datas:
        ex.append(hashes._hash_bytes(d, 10**9, False))
        fa.append(hashes._hash_bytes(d, 10**9, True))
    diff = np.bitwise_count(np.array(ex, np.uint64) ^ np.array(fa, np.uint64))
    out = {h: round(float(diff[:, k].mean()), 3) for k, h in enumerate(hashes.HASHES)}
    out.update(
        {f"{h}_p95": float(np.percentile(diff[:, k], 95)) for k, h in enumerate(hashes.HASHES)}
    )
    return out


def _bench_embed(tmp: Path, files: list[Path], captions: list[str]) -> dict[str, Any]:
    import torch

    from audit import embeddings
    from audit.images import decode

    ws = _workspace(tmp / "ws-embed", files, captions)
    workers, batch = 1, 32
    t0 = time.perf_counter()
    s = embeddings.compute(
        ws.root, model="ViT-B-32", pretrained="none", batch_size=batch, workers=workers
    )
    pipeline = time.perf_counter() - t0
    clip = embeddings.load_model("ViT-B-32", "none")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))  # what compute() uses
    pre = [clip.prepare(decode(f.read_bytes(), draft_size=(224, 224))) for f in files]
    tokens = clip.tokenizer(captions)
    t0 = time.perf_counter()
    for k in range(0, len(files), batch):
        clip.encode_image_tensor(torch.stack(pre[k : k + batch]))
        clip.encode_text_tokens(tokens[k : k + batch])
    bare = time.perf_counter() - t0
    torch.set_num_threads(threads)
    return {
        "images": len(files),
        "model": "ViT-B-32 (random weights)",
        "batch_size": batch,
        "decode_workers": workers,
        "torch_threads": max(1, (os.cpu_count() or 1) - workers),
        "pipeline_s": round(pipeline, 3),
        "pipeline_stage_s": s["seconds"],
        "bare_forward_s": round(bare, 3),
        "ratio_stage_over_bare": round(s["seconds"] / bare, 3),
        "peak_rss_mb": _rss_mb(),
    }


def _bench_near(n: int, subset: int) -> dict[str, Any]:
    import faiss

    from audit.checks import duplicates

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)
    src = rng.choice(n, 1000, replace=False)
    near = codes[src].copy()
    for k in range(1000):
        for b in rng.choice(64, size=int(rng.integers(1, 7)), replace=False):
            near[k] ^= np.uint64(1) << np.uint64(int(b))
    sub = np.unique(np.concatenate([codes[src], near, codes[: max(0, subset - 2000)]]))
    codes = np.unique(np.concatenate([codes, near]))
    t0 = time.perf_counter()
    i, j, _ = duplicates.near_pairs(codes, 6)
    cand = time.perf_counter() - t0
    planted_found = int(len(np.intersect1d(np.concatenate([codes[i], codes[j]]), near)))
    t0 = time.perf_counter()
    index = faiss.IndexBinaryFlat(64)
    index.add(np.ascontiguousarray(sub.astype(">u8").view(np.uint8).reshape(-1, 8)))
    lims, dist, ids = index.range_search(
        np.ascontiguousarray(sub.astype(">u8").view(np.uint8).reshape(-1, 8)), 7
    )
    brute = time.perf_counter() - t0
    q = np.repeat(np.arange(len(sub)), np.diff(lims.astype(np.int64)))
    brute_pairs = {(int(a), int(b)) for a, b in zip(q, ids, strict=True) if a < b}
    si, sj, _ = duplicates.near_pairs(sub, 6)
    agree = brute_pairs == set(zip(si.tolist(), sj.tolist(), strict=True))
    extrapolated = brute * (len(codes) / len(sub)) ** 2
    return {
        "codes": int(len(codes)),
        "pairs_found": int(len(i)),
        "planted": 1000,
        "bands": duplicates.choose_bands(len(codes), 6),
        "candidate_s": round(cand, 2),
        "brute_subset": int(len(sub)),
        "brute_subset_s": round(brute, 3),
        "brute_extrapolated_s": round(extrapolated, 1),
        "speedup": round(extrapolated / cand, 1),
        "agree_on_subset": agree,
        "planted_pairs_seen": planted_found,
        "peak_rss_mb": _rss_mb(),
    }


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    os.environ.setdefault("AUDIT_NO_PROGRESS", "1")
    out_dir = Path(out_dir)
    result: dict[str, Any] = {"quick": quick}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        files, captions = _sample_files(tmp, 300 if not quick else 120)
        result["hash_sample"] = _bench_hash(tmp, "sample", files)
        result["agreement_sample"] = agreement([f.read_bytes() for f in files])
        if OPENCLIPART.is_dir():
            import random

            pool = sorted(OPENCLIPART.rglob("*.png"))
            pngs = random.Random(1).sample(pool, 200 if quick else 1000)
            result["hash_openclipart_full_size"] = _bench_hash(tmp, "openclipart", pngs)
            datas = [p.read_bytes() for p in pngs]
            jpegs = []
            from audit.images import decode

            for d in datas:
                buf = io.BytesIO()
                decode(d).save(buf, "JPEG", quality=90)
                jpegs.append(buf.getvalue())
            result["agreement_openclipart_png"] = agreement(datas)
            result["agreement_openclipart_jpeg_q90"] = agreement(jpegs)
        n_embed = 64 if quick else 256
        result["embed"] = _bench_embed(tmp, files[:n_embed], captions[:n_embed])
    result["near_duplicates"] = _bench_near(
        200_000 if quick else 1_000_000, 10_000 if quick else 20_000
    )
    (out_dir / "descriptors.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "descriptors.md").write_text(_markdown(result))
    return result


def _markdown(r: dict[str, Any]) -> str:
    lines = ["# Descriptor benchmarks", "", __doc__.strip(), ""]
    for key, val in r.items():
        if isinstance(val, dict):
            lines += [f"## {key}", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in val.items()]
            lines.append("")
    return "\n".join(lines)
