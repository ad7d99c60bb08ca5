"""The canonical metadata schema and the LAION column variants that map onto it.

Every ingested record becomes one row of `metadata/part-NNNNN.parquet` with the columns of
`METADATA` below, followed by any columns of the source that are not recognised (kept under
their own names, so nothing is lost). `SOURCE_COLUMNS` says which source names map to which
canonical name; the first name present wins. The mapping used for each input file is also
recorded in the manifest, so `audit filter` can write the consented subset back in the
input's own schema.
"""

from __future__ import annotations

import pyarrow as pa

# Canonical name -> accepted source names, in order of preference (matched case-insensitively).
# LAION-400M: SAMPLE_ID, URL, TEXT, HEIGHT, WIDTH, LICENSE, NSFW, similarity
# LAION-5B / laion2B: URL, TEXT, WIDTH, HEIGHT, similarity, punsafe, pwatermark, hash,
#                     AESTHETIC_SCORE, LANGUAGE
# img2dataset: key, url, caption, width, height, original_width, original_height, status,
#              error_message, sha256, exif
SOURCE_COLUMNS: dict[str, tuple[str, ...]] = {
    "key": ("key", "SAMPLE_ID", "sample_id", "id"),
    "url": ("url", "URL", "image_url"),
    # `txt`: img2dataset's caption sidecar extension, and the column of its sample inputs
    "caption": ("caption", "TEXT", "text", "alt", "alt_text", "txt"),
    "width": ("width", "WIDTH"),
    "height": ("height", "HEIGHT"),
    "original_width": ("original_width",),
    "original_height": ("original_height",),
    "license": ("license", "LICENSE"),
    "nsfw": ("nsfw", "NSFW"),
    "similarity": ("similarity",),
    "punsafe": ("punsafe",),
    "pwatermark": ("pwatermark",),
    "aesthetic": ("aesthetic", "AESTHETIC_SCORE", "aesthetic_score"),
    "language": ("language", "LANGUAGE"),
    "laion_hash": ("hash",),
    "sha256": ("sha256",),
    "download_status": ("status",),
    "download_error": ("error_message",),
    "exif": ("exif",),
    "page_url": ("page_url", "PAGE_URL", "source_page"),
}

# A source must carry at least one of each group.
REQUIRED_GROUPS: tuple[tuple[str, ...], ...] = (("url",), ("caption",))

# Canonical columns of metadata parts, in order.
METADATA = pa.schema(
    [
        pa.field("row_id", pa.int64(), nullable=False),
        pa.field("key", pa.string()),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("license", pa.string()),
        pa.field("nsfw", pa.string()),
        pa.field("similarity", pa.float32()),
        pa.field("punsafe", pa.float32()),
        pa.field("pwatermark", pa.float32()),
        pa.field("aesthetic", pa.float32()),
        pa.field("language", pa.string()),
        pa.field("laion_hash", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("download_status", pa.string()),
        pa.field("download_error", pa.string()),
        pa.field("exif", pa.string()),
        pa.field("page_url", pa.string()),
        # provenance: where this record came from
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),
        # where its image bytes are: `image_path` (a tar shard or a plain file), the tar
        # member name, and the byte range of the member's data inside the file, so one
        # seek + read gets the bytes without scanning the tar.
        pa.field("image_path", pa.string()),
        pa.field("image_member", pa.string()),
        pa.field("image_offset", pa.int64()),
        pa.field("image_size", pa.int64()),
        pa.field("image_sha256", pa.string()),
        pa.field("image_format", pa.string()),
        pa.field("image_width", pa.int32()),
        pa.field("image_height", pa.int32()),
        # ok | missing (no image found for the record) | error (see errors/)
        pa.field("image_status", pa.string()),
    ]
)

CANONICAL = frozenset(METADATA.names)

# Columns ingest fills itself (identity, provenance, image location); no input feeds them and
# they are not part of any input's own schema.
PROVENANCE = ("row_id", "source_file", "source_row")
IMAGE_COLUMNS = (
    "image_path",
    "image_member",
    "image_offset",
    "image_size",
    "image_sha256",
    "image_format",
    "image_width",
    "image_height",
    "image_status",
)
COMPUTED = PROVENANCE + IMAGE_COLUMNS
# What a stage reads to fetch a row's image bytes (`audit.images.read_bytes`) and to know
# whether there is one.
IMAGE_LOCATION = ("image_path", "image_offset", "image_size", "image_status")

# Rows of errors/<stage>-*.parquet.
# The perceptual hashes of `hashes/part-*.parquet`, in column order (uint64, imagehash's bits).
HASHES = ("phash", "dhash", "whash", "ahash")

ERRORS = pa.schema(
    [
        pa.field("stage", pa.string()),
        pa.field("row_id", pa.int64()),
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
    ]
)


def error_table(rows: list[dict]) -> pa.Table:
    """Errors as an Arrow table with the `ERRORS` schema (missing fields become null)."""
    if not rows:
        # (from_pylist and empty_table import pandas, seconds for nothing in a short run)
        return pa.Table.from_arrays([pa.nulls(0, f.type) for f in ERRORS], schema=ERRORS)
    return pa.Table.from_pylist(
        [{name: r.get(name) for name in ERRORS.names} for r in rows], schema=ERRORS
    )
