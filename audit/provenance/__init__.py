"""The provenance stage: which training images say they were generated, and how we know.

Public API (each is one CLI command or a call of `audit generate`):

- `detect(ws_root)` -> `audit provenance WS`: reads every row's image bytes and writes
  `provenance/synthetic-NNNNN.parquet` (one per metadata part, one row per record; view
  `synthetic`). A row is synthetic when its XMP `Iptc4xmpExt:DigitalSourceType` or an action of
  its C2PA manifest names a generated-media source type (`credentials.SYNTHETIC_TYPES`: IPTC
  trainedAlgorithmicMedia, compositeSynthetic, algorithmicMedia, compositeWithTrainedAlgorithmicMedia;
  full URI or bare code). Every mark counts whatever its signature says: a label claiming an
  image is generated is reason enough not to train on it, and the C2PA state (trusted,
  untrusted, tampered, invalid) is recorded beside it so a reader can weigh it.
  `audit filter --exclude-synthetic` drops those rows (training on generated images is a known
  cause of model collapse: Shumailov et al., Nature 2024).
- `marking.Marker` marks what `audit generate` writes (see `audit.provenance.marking`).

Rows without readable image bytes get `synthetic` null (unknown), never false, and an error row.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from audit import credentials
from audit.images import ImageProblem, read_bytes
from audit.schema import IMAGE_LOCATION
from audit.workspace import Output, Workspace, atomic_write_parquet, sha256_file

STAGE = "provenance"


def _schema() -> Any:
    import pyarrow as pa

    s = pa.string()
    return pa.schema(
        [
            ("row_id", pa.int64()),
            ("synthetic", pa.bool_()),
            ("digital_source_type", s),  # the deciding source type (a synthetic one first)
            ("mark", s),  # iptc-xmp, c2pa, iptc-xmp+c2pa, or none
            ("xmp_source_type", s),
            ("c2pa_source_type", s),
            ("c2pa_state", s),  # credentials.STATES, null without a manifest
            ("c2pa_signer", s),
            ("c2pa_manifest", s),
            ("c2pa_training_mining", s),  # JSON {entry: use}
            ("evidence", s),
        ]
    )


def marks(data: bytes, trust_anchors: str | None = None) -> dict[str, Any]:
    """The provenance columns (all but row_id) for the bytes of one image."""
    xmp = list(
        dict.fromkeys(
            t for p in credentials.xmp_packets(data) for t in credentials.source_types_in_xmp(p)
        )
    )
    creds = credentials.read(data, trust_anchors)
    c2pa_types = creds.source_types if creds else []
    found = [("iptc-xmp", t) for t in xmp] + [("c2pa", t) for t in c2pa_types]
    synthetic = [(m, t) for m, t in found if credentials.is_synthetic(t)]
    mark = "+".join(dict.fromkeys(m for m, _ in synthetic)) or "none"
    deciding = (synthetic or found)[0][1] if found else None
    evidence = []
    if xmp:
        evidence.append(f"XMP Iptc4xmpExt:DigitalSourceType={', '.join(xmp)}")
    if creds is not None:
        types = ", ".join(c2pa_types) or "no digitalSourceType"
        evidence.append(f"C2PA actions: {types} ({creds.summary})")
    return {
        "synthetic": bool(synthetic),
        "digital_source_type": deciding,
        "mark": mark,
        "xmp_source_type": ", ".join(xmp) or None,
        "c2pa_source_type": ", ".join(c2pa_types) or None,
        "c2pa_state": creds.state if creds else None,
        "c2pa_signer": creds.signer if creds else None,
        "c2pa_manifest": creds.manifest if creds else None,
        "c2pa_training_mining": json.dumps(creds.training_mining) if creds else None,
        "evidence": "; ".join(evidence) or "no digital source type, no C2PA manifest",
    }


def _part(rows: list[dict[str, Any]], trust: str | None) -> tuple[list[dict], list[dict]]:
    from audit.progress import track

    out, errors = [], []
    empty = {name: None for name in _schema().names}
    for row in track(rows, len(rows), "provenance marks"):
        if row["image_status"] != "ok" or not row["image_path"]:
            why = f"no image bytes (image_status={row['image_status']})"
            out.append({**empty, "row_id": row["row_id"], "mark": "none", "evidence": why})
            continue
        try:
            data = read_bytes(row["image_path"], row["image_offset"], row["image_size"])
        except ImageProblem as p:
            out.append({**empty, "row_id": row["row_id"], "mark": "none", "evidence": str(p)})
            errors.append(
                {
                    "stage": STAGE,
                    "row_id": row["row_id"],
                    "source_file": row["source_file"],
                    "source_row": row["source_row"],
                    "reason": p.reason,
                    "detail": p.detail,
                }
            )
            continue
        out.append({"row_id": row["row_id"], **marks(data, trust)})
    return out, errors


def detect(ws_root: str | os.PathLike[str], trust_anchors: str | None = None) -> dict[str, Any]:
    """Find generated images by their marks; returns the stage summary.

    `trust_anchors`: a PEM file of CA certificates whose signers count as trusted (without
    it, every C2PA signature is at best "untrusted": audit ships no trust list).

    >>> detect("indexes/sample")  # doctest: +SKIP
    {'rows': 300, 'synthetic': 0, 'unknown': 0, 'by_mark': {}, 'c2pa_states': {}, ...}
    """
    import pyarrow as pa

    from audit.errors import AuditError
    from audit.schema import error_table

    started = time.monotonic()
    ws = Workspace.open(ws_root)
    parts = ws.require_parts()
    trust = None
    if trust_anchors is not None:
        try:
            trust = Path(trust_anchors).read_text("ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise AuditError(
                f"--trust-anchors {trust_anchors}: cannot read a PEM file ({e})."
            ) from e
    params = {"trust_anchors": None if trust is None else sha256_file(trust_anchors)}  # type: ignore[arg-type]
    run = ws.start_stage(STAGE, params, depends_on=["ingest"])
    columns = ["row_id", "source_file", "source_row", *IMAGE_LOCATION]
    for part in parts:
        if run.is_done(part.number):
            continue
        table = ws.read_part(part, columns=columns)
        rows, errors = _part(table.to_pylist(), trust)
        rel = f"provenance/synthetic-{part.stem}.parquet"
        atomic_write_parquet(ws.path(rel), pa.Table.from_pylist(rows, schema=_schema()))
        outputs = [Output(rel, rows=len(rows), row_offset=part.row_offset)]
        if errors:
            err = f"errors/{STAGE}-{part.stem}.parquet"
            atomic_write_parquet(ws.path(err), error_table(errors))
            outputs.append(Output(err, rows=len(errors), row_offset=part.row_offset))
        run.record_part(part.number, outputs)
    con = ws.connect()

    def counts(sql: str) -> dict[str, int]:
        return {str(k): int(n) for k, n in con.execute(sql).fetchall()}

    summary = {
        "rows": ws.num_rows,
        "synthetic": int(
            con.execute("SELECT count(*) FROM synthetic WHERE synthetic").fetchone()[0]
        ),
        "unknown": int(
            con.execute("SELECT count(*) FROM synthetic WHERE synthetic IS NULL").fetchone()[0]
        ),
        "by_mark": counts(
            "SELECT mark, count(*) FROM synthetic WHERE synthetic GROUP BY 1 ORDER BY 1"
        ),
        "by_source_type": counts(
            "SELECT digital_source_type, count(*) FROM synthetic "
            "WHERE digital_source_type IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1"
        ),
        "c2pa_states": counts(
            "SELECT c2pa_state, count(*) FROM synthetic WHERE c2pa_state IS NOT NULL GROUP BY 1 ORDER BY 1"
        ),
        "trust_anchors": ws.relative(trust_anchors) if trust_anchors else None,
        "seconds": round(time.monotonic() - started, 2),
    }
    run.finish(summary)
    return summary
