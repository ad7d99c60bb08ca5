"""clip-retrieval's layout in and out: import precomputed embeddings, export audit's for its back end.

clip-retrieval inference writes, per output partition N (zero-padded to the partition count):
  `img_emb/img_emb_N.npy`    float16 (rows, D), L2-normalised image embeddings;
  `text_emb/text_emb_N.npy`  the same for captions (absent with `--enable_text False`);
  `metadata/metadata_N.parquet`  one row per embedding, same order: `image_path` (the
      webdataset key, or the image file's path for `--input_format files`), `caption`, and
      with `--enable_metadata` the sample's `.json` fields (img2dataset's `key`, `url`, ...).
`clip-retrieval index` (autofaiss) then writes `image.index`, `image.json` (autofaiss's
index infos), `text.index`, `text.json` and copies `metadata/`; its back end maps a faiss id
to the metadata row at that position of the concatenated `metadata/*.parquet`.

`import_embeddings` aligns rows by identity, never by position: each clip-retrieval row is
matched to a workspace row by `key` (its metadata `key` column when present, else its
`image_path`, which is the key for webdataset input), or else by the image's file path or
file stem. The join runs in duckdb and the vectors are gathered from memory-mapped `.npy`
files part by part, so a billion embeddings never sit in memory. The result is an ordinary
`embed` stage (same files as `audit embed`), with the model recorded as the user names it.

`export_embeddings` writes the workspace's embeddings in that layout, one partition per
metadata part, only rows with an image embedding (clip-retrieval never has the others), and
`image.index` whose ids are positions in that export (audit's own index, same kind and
training, with ids renumbered), so clip-retrieval's back end serves it as it is.

    >>> from audit import clip_retrieval
    >>> clip_retrieval.import_embeddings("indexes/mine", "embeddings_out/", model_name="ViT-L-14/openai")  # doctest: +SKIP
    >>> clip_retrieval.export_embeddings("indexes/mine", "clip_index/")                                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import AuditError
from audit.schema import error_table
from audit.workspace import (
    Output,
    Workspace,
    atomic_path,
    atomic_write_json,
    atomic_write_npy,
    atomic_write_parquet,
    sha256_file,
)

STAGE = "embed"
_PART = re.compile(r"^(img_emb|text_emb|metadata)_(\d+)\.(npy|parquet)$")


@dataclass
class ImportSummary:
    rows: int  # workspace rows
    matched: int  # workspace rows that received an image embedding
    unmatched_embeddings: int  # clip-retrieval rows naming no workspace row
    ambiguous: int  # clip-retrieval rows whose identity names several workspace rows
    dim: int
    model: str
    matched_by: str


def _partitions(folder: Path) -> list[tuple[str, Path, Path | None, Path]]:
    """(number, img_emb, text_emb or None, metadata) per partition, in number order."""
    meta = {
        m.group(2): p
        for p in sorted((folder / "metadata").glob("metadata_*.parquet"))
        if (m := _PART.match(p.name))
    }
    if not meta:
        raise AuditError(
            f"{folder} has no metadata/metadata_N.parquet: it is not clip-retrieval inference "
            "output. Pass the folder given to clip-retrieval as --output_folder."
        )
    out = []
    for num in sorted(meta, key=int):
        img = folder / "img_emb" / f"img_emb_{num}.npy"
        txt = folder / "text_emb" / f"text_emb_{num}.npy"
        if not img.is_file():
            raise AuditError(
                f"{img} is missing but {meta[num]} exists. Image embeddings are required "
                "(clip-retrieval --enable_image True); copy the whole output folder."
            )
        out.append((num, img, txt if txt.is_file() else None, meta[num]))
    return out


def import_embeddings(
    ws_root: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    model_name: str,
    pretrained: str = "unknown",
    trained: bool = True,
) -> dict[str, Any]:
    """Import clip-retrieval embeddings into the workspace as its `embed` stage.

    `model_name` is recorded as given (the model that made the embeddings: audit cannot check
    it); `trained=False` marks random-weight embeddings (checks that need meaning skip them).
    """
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    src = Path(folder)
    if not model_name:
        raise AuditError(
            "name the model that made the embeddings (--model-name, e.g. ViT-B-32/openai)."
        )
    ws = Workspace.open(ws_root)
    parts = ws.require_parts()
    partitions = _partitions(src)
    mmaps = [np.load(p[1], mmap_mode="r") for p in partitions]
    tmaps = [np.load(p[2], mmap_mode="r") if p[2] is not None else None for p in partitions]
    dim = int(mmaps[0].shape[1])
    for (_, img_file, _, meta), m, t in zip(partitions, mmaps, tmaps, strict=True):
        rows = pq.ParquetFile(meta).metadata.num_rows
        if m.shape != (rows, dim) or (t is not None and t.shape != m.shape):
            raise AuditError(
                f"{img_file} holds {m.shape} but {meta.name} has {rows} rows of dimension {dim}: "
                "the partition is incomplete. Re-run clip-retrieval inference for it."
            )
    con = duckdb.connect()
    con.execute("SET memory_limit='1GB'")
    metas = [str(p[3]) for p in partitions]
    names = set(pq.read_schema(metas[0]).names)
    ident = "coalesce(CAST(key AS VARCHAR), image_path)" if "key" in names else "image_path"
    con.execute(
        f"""CREATE TEMP TABLE cr AS SELECT {ident} AS ident, image_path,
                   CAST(regexp_extract(filename, 'metadata_(\\d+)\\.parquet$', 1) AS INTEGER) AS part,
                   file_row_number AS prow
            FROM read_parquet({_sql_list(metas)}, filename=true, file_row_number=true)"""
    )
    ws_files = [str(ws.path(p.path)) for p in parts]
    con.execute(
        f"CREATE TEMP VIEW ws AS SELECT row_id, key, {ws.image_path_sql()} AS ws_path "
        f"FROM read_parquet({_sql_list(ws_files)})"
    )
    # by key (webdataset image_path, or the json `key`), else by file path, else by file stem
    matched_by, join = "key", "cr.ident = ws.key"
    if _count(con, f"SELECT count(*) FROM cr JOIN ws ON {join}") == 0:
        matched_by, join = "image_path", "cr.image_path = ws.ws_path"
        if _count(con, f"SELECT count(*) FROM cr JOIN ws ON {join}") == 0:
            matched_by = "file stem"
            join = "regexp_extract(cr.image_path, '([^/]+?)(\\.[^./]*)?$', 1) = ws.key"
    con.execute(
        f"""CREATE TEMP TABLE pairs AS
            SELECT ws.row_id, cr.part, cr.prow, count(*) OVER (PARTITION BY cr.part, cr.prow) AS n,
                   count(*) OVER (PARTITION BY ws.row_id) AS m
            FROM cr JOIN ws ON {join}"""
    )
    ambiguous = _count(con, "SELECT count(*) FROM pairs WHERE n > 1 OR m > 1")
    unmatched = _count(
        con, f"SELECT count(*) FROM cr WHERE NOT EXISTS (SELECT 1 FROM ws WHERE {join})"
    )
    numbers = {int(num): i for i, (num, _, _, _) in enumerate(partitions)}
    # the clip-retrieval folder becomes an input root: the manifest names it `@<root>`
    ws.add_root(src)
    imported_from = ws.store(src.resolve())
    params = {
        "model": model_name,
        "pretrained": pretrained,
        "trained": trained,
        "dim": dim,
        "imported_from": imported_from,
        "imported_files": {str(p[3].name): sha256_file(p[3]) for p in partitions},
    }
    run = ws.start_stage(STAGE, params, depends_on=["ingest"])
    info = {
        "model": model_name,
        "pretrained": pretrained,
        "trained": trained,
        "dim": dim,
        "image_size": None,
        "source": "clip-retrieval",
        "imported_from": imported_from,
    }
    atomic_write_json(ws.path("embeddings/model.json"), info)
    matched = 0
    for part in parts:
        got = con.execute(
            """SELECT row_id, part, prow FROM pairs WHERE n = 1 AND m = 1
               AND row_id >= ? AND row_id < ? ORDER BY part, prow""",
            [part.row_offset, part.row_offset + part.rows],
        ).fetchnumpy()
        img = np.zeros((part.rows, dim), np.float16)
        txt = np.zeros((part.rows, dim), np.float16)
        local = np.asarray(got["row_id"], np.int64) - part.row_offset
        for num in np.unique(got["part"]):
            sel = got["part"] == num
            i = numbers[int(num)]
            rows = np.asarray(got["prow"][sel], np.int64)
            img[local[sel]] = mmaps[i][rows]
            text_vecs = tmaps[i]
            if text_vecs is not None:
                txt[local[sel]] = text_vecs[rows]
        matched += len(local)
        missing = np.setdiff1d(np.arange(part.rows), local)
        errors = [
            {
                "stage": STAGE,
                "row_id": part.row_offset + int(r),
                "source_file": imported_from,
                "source_row": None,
                "reason": "embedding_missing",
                "detail": f"no clip-retrieval row matched this row by {matched_by} "
                "(or several did)",
            }
            for r in missing
        ]
        has = (np.abs(img).sum(1) > 0) & (np.abs(txt).sum(1) > 0)
        sim = (img.astype(np.float32) * txt.astype(np.float32)).sum(1)
        scores = pa.table(
            {
                "row_id": np.arange(part.row_offset, part.row_offset + part.rows, dtype=np.int64),
                "clip_similarity": pa.array(sim, pa.float32(), mask=~has),
            }
        )
        rels = [
            f"embeddings/img-{part.stem}.npy",
            f"embeddings/txt-{part.stem}.npy",
            f"embeddings/scores-{part.stem}.parquet",
            f"errors/{STAGE}-{part.stem}.parquet",
        ]
        atomic_write_npy(ws.path(rels[0]), img)
        atomic_write_npy(ws.path(rels[1]), txt)
        atomic_write_parquet(ws.path(rels[2]), scores)
        atomic_write_parquet(ws.path(rels[3]), error_table(errors))
        run.record_part(
            part.number,
            [Output(r, part.rows, part.row_offset) for r in rels[:3]]
            + [Output(rels[3], len(errors))],
            image_errors=len(errors),
        )
    summary = ImportSummary(
        rows=sum(p.rows for p in parts),
        matched=matched,
        unmatched_embeddings=int(unmatched),
        ambiguous=int(ambiguous),
        dim=dim,
        model=model_name,
        matched_by=matched_by,
    )
    out = asdict(summary) | {"seconds": round(time.perf_counter() - start, 2)}
    # the same summary keys as `audit embed`, so status and reports read it alike
    out.update(
        embedded=matched, errors=out["rows"] - matched, pretrained=pretrained, trained=trained
    )
    run.finish(out, [Output("embeddings/model.json")])
    return out


def _count(con: Any, sql: str) -> int:
    return int(con.sql(sql).fetchall()[0][0])


def _sql_list(paths: list[str]) -> str:
    # DDL cannot take prepared parameters: quote the paths as SQL string literals
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _index_key(spec: dict[str, Any]) -> str:
    """autofaiss's `index_key` (a faiss factory string) for audit's index kinds."""
    kind = spec.get("kind")
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{spec['M']}"
    if kind == "ivf":
        return f"IVF{spec['nlist']},Flat"
    return f"IVF{spec['nlist']},PQ{spec['m']}x{spec['nbits']}"


def export_embeddings(
    ws_root: str | os.PathLike[str], out: str | os.PathLike[str]
) -> dict[str, Any]:
    """Write the workspace's embeddings, metadata and image index in clip-retrieval's layout."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    ws = Workspace.open(ws_root)
    parts = ws.require_parts()
    if not ws.path("embeddings/model.json").exists():
        raise AuditError(f"{ws.root} has no embeddings yet. Run: audit embed {ws.root}")
    # the index stage's files (faiss/info.json, faiss/img.faiss): ids are row_ids
    info_path = ws.path("faiss/info.json")
    info = (json.loads(info_path.read_text()) if info_path.exists() else {}).get("image") or {}
    if not info.get("path"):
        raise AuditError(f"{ws.root} has no image index yet. Run: audit index {ws.root}")
    index = faiss.read_index(str(ws.path(info["path"])))
    dest = Path(out)
    for sub in ("img_emb", "text_emb", "metadata"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    width = len(str(max(len(parts) - 1, 0)))
    # clip-retrieval zero-pads partition numbers to the partition count
    exported = faiss.clone_index(index)
    exported.reset()  # same kind, training (centroids, codebooks) and parameters; no vectors
    text_index = None
    position = 0
    cols = ["row_id", "key", "url", "caption", "image_path", "image_member", "width", "height"]
    for part in parts:
        img = np.load(ws.path(f"embeddings/img-{part.stem}.npy"), mmap_mode="r")
        txt = np.load(ws.path(f"embeddings/txt-{part.stem}.npy"), mmap_mode="r")
        keep = np.flatnonzero(np.any(img != 0, axis=1))
        meta = pq.read_table(ws.path(part.path), columns=cols).take(pa.array(keep))
        keys = meta.column("key").to_pylist()
        names = meta.column("image_member").to_pylist()
        paths = meta.column("image_path").to_pylist()
        # clip-retrieval's `image_path`: the webdataset key, or the image's path
        ident = [
            k if k is not None else (n or p) for k, n, p in zip(keys, names, paths, strict=True)
        ]
        table = meta.drop_columns(["image_path", "image_member"])
        table = table.add_column(0, "image_path", pa.array(ident, pa.string()))
        num = str(part.number).zfill(width)
        vecs, tvecs = np.asarray(img[keep], np.float16), np.asarray(txt[keep], np.float16)
        atomic_write_npy(dest / "img_emb" / f"img_emb_{num}.npy", vecs)
        atomic_write_npy(dest / "text_emb" / f"text_emb_{num}.npy", tvecs)
        atomic_write_parquet(dest / "metadata" / f"metadata_{num}.parquet", table)
        ids = np.arange(position, position + len(keep), dtype=np.int64)
        if len(keep):
            exported.add_with_ids(np.ascontiguousarray(vecs, np.float32), ids)
            if text_index is None:
                text_index = faiss.IndexFlatIP(tvecs.shape[1])
            text_index.add(np.ascontiguousarray(tvecs, np.float32))
        position += len(keep)
    _write_index(exported, dest / "image.index")
    d = int(index.d)
    infos = {
        "index_key": _index_key(info),
        "index_param": f"nprobe={info['nprobe']}" if "nprobe" in info else "",
        "index_path": "image.index",
        "size in bytes": (dest / "image.index").stat().st_size,
        "nb vectors": position,
        "vectors dimension": d,
        "compression ratio": round(
            position * d * 4 / max(1, (dest / "image.index").stat().st_size), 3
        ),
        "recall_at_10": info.get("recall_at_10"),
        "made_by": "audit export-embeddings",
    }
    atomic_write_json(dest / "image.json", infos)
    if text_index is not None:
        _write_index(text_index, dest / "text.index")
        atomic_write_json(
            dest / "text.json",
            {
                "index_key": "Flat",
                "index_param": "",
                "index_path": "text.index",
                "nb vectors": position,
                "vectors dimension": d,
                "made_by": "audit export-embeddings",
            },
        )
    model = json.loads(ws.path("embeddings/model.json").read_text())
    return {
        "vectors": position,
        "partitions": len(parts),
        "dim": d,
        "index_key": infos["index_key"],
        "model": model.get("model"),
        "out": str(dest),
    }


def _write_index(index: Any, path: Path) -> None:
    import faiss

    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
