"""Source columns -> canonical columns: which column is which, and casting with bad values kept.

`resolve` decides, once per input file, which source column feeds each canonical column
(`schema.SOURCE_COLUMNS`, first accepted name present wins, exact spelling before a
case-insensitive match) and which source columns are kept as extras under their own name.
`convert` casts one column to its canonical type; a value that does not fit becomes null
and is reported by position so the caller can write a `bad_value` error row.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa

from audit.errors import AuditError
from audit.schema import CANONICAL, METADATA, REQUIRED_GROUPS, SOURCE_COLUMNS
from audit.schema import COMPUTED as COMPUTED

# Canonical columns a source can feed, in schema order.
FROM_SOURCE = tuple(name for name in METADATA.names if name not in COMPUTED)
# Sidecar-based sources keep unknown JSON keys here, as one JSON object per row.
EXTRA_JSON = "extra_json"


def resolve(
    names: list[str],
    where: str,
    required: bool = True,
    overrides: dict[str, str] | None = None,
    caption_optional: bool = False,
) -> tuple[dict[str, str], dict[str, str]]:
    """(canonical -> source name, workspace extra name -> source name) for these source columns.

    `overrides` (canonical -> source column, from `--url-col` / `--caption-col`) win over the
    accepted names; one that names no column raises. With `required`, a source lacking a
    column of each `schema.REQUIRED_GROUPS` group raises an `AuditError` listing the columns
    found and the accepted names; `caption_optional` drops the caption group (a URL list, or
    img2dataset output of a URL list, has no captions by nature).
    """
    by_lower: dict[str, list[str]] = {}
    for n in names:
        by_lower.setdefault(n.lower(), []).append(n)
    mapping: dict[str, str] = {}
    used: set[str] = set()
    for canonical, src in (overrides or {}).items():
        if src not in names:
            raise AuditError(
                f"{where} has no column {src!r} (asked for as the {canonical} column). "
                f"Found columns: {', '.join(names) or '(none)'}. Pass one of those to "
                f"--{canonical}-col."
            )
        mapping[canonical] = src
        used.add(src)
    for canonical in FROM_SOURCE:
        if canonical in mapping:
            continue
        for accepted in SOURCE_COLUMNS.get(canonical, ()):
            hit = (
                accepted
                if accepted in names
                else next(iter(by_lower.get(accepted.lower(), [])), None)
            )
            if hit is not None and hit not in used:
                mapping[canonical] = hit
                used.add(hit)
                break
    if required:
        groups = [g for g in REQUIRED_GROUPS if not (caption_optional and g == ("caption",))]
        missing = [g for g in groups if not any(c in mapping for c in g)]
        if missing:
            accepted = "; ".join(f"{c}: {', '.join(SOURCE_COLUMNS[c])}" for g in missing for c in g)
            raise AuditError(
                f"{where} lacks required column(s) {', '.join(c for g in missing for c in g)}. "
                f"Found columns: {', '.join(names) or '(none)'}. Accepted names: {accepted}. "
                "Name the column with --url-col / --caption-col, rename it in the file, "
                "or pass the right file."
            )
    extras: dict[str, str] = {}
    # duckdb names are case-insensitive, so an extra that matches a canonical name in any
    # case (e.g. a second `URL` beside `url`) gets a `source_` prefix instead of clashing.
    taken = {c.lower() for c in CANONICAL} | {EXTRA_JSON}
    for n in names:
        if n in used:
            continue
        out = n
        while out.lower() in taken:
            out = f"source_{out}"
        taken.add(out.lower())
        extras[out] = n
    return mapping, extras


def convert(values: Any, target: pa.DataType) -> tuple[pa.Array, list[tuple[int, str, Any]]]:
    """Cast `values` (an Arrow array or a Python list) to `target`.

    Returns the array and its problems as (position, kind, original value): kind `bad_value`
    for a value that did not fit and became null, `not_utf8` for bytes that were decoded with
    replacement characters (the text is kept). NaN counts as null, not as a bad value: it is
    how pandas-written files spell "unknown".
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        if values.type == target:
            return values, []
        if pa.types.is_floating(values.type) and not pa.types.is_floating(target):
            import pyarrow.compute as pc

            values = pc.if_else(pc.is_nan(values), pa.scalar(None, values.type), values)
        try:
            return values.cast(target), []
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            values = values.to_pylist()
    out: list[Any] = []
    problems: list[tuple[int, str, Any]] = []
    for i, v in enumerate(values):
        if isinstance(v, bytes) and pa.types.is_string(target):
            try:
                out.append(v.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(v.decode("utf-8", errors="replace"))
                problems.append((i, "not_utf8", v))
            continue
        try:
            out.append(_one(v, target))
        except (TypeError, ValueError, OverflowError):
            out.append(None)
            problems.append((i, "bad_value", v))
    return pa.array(out, type=target), problems


_INT_RANGE = {8: 1 << 7, 16: 1 << 15, 32: 1 << 31, 64: 1 << 63}


def _one(v: Any, target: pa.DataType) -> Any:
    """One value in `target`'s Python form; raises ValueError/TypeError when it does not fit."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if pa.types.is_string(target):
        if isinstance(v, (dict, list)):
            return json.dumps(v, ensure_ascii=False, default=str)
        return str(v)
    if pa.types.is_integer(target):
        if isinstance(v, bool):
            raise TypeError("bool")
        if isinstance(v, str):
            v = v.strip()
            n = int(v) if v.lstrip("+-").isdigit() else _integral(float(v))
        elif isinstance(v, float):
            n = _integral(v)
        elif isinstance(v, int):
            n = v
        else:
            raise TypeError(type(v).__name__)
        limit = _INT_RANGE[target.bit_width]
        if not -limit <= n < limit:
            raise OverflowError(n)
        return n
    if pa.types.is_floating(target):
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise TypeError(type(v).__name__)
        f = float(v)
        return None if math.isnan(f) else f
    raise TypeError(f"no conversion to {target}")


def _integral(f: float) -> int:
    if math.isnan(f):
        raise ValueError("nan")
    if not f.is_integer():
        raise ValueError(f"{f} is not a whole number")
    return int(f)


# Columns whose values must be text in the source: an integer "URL" cast to "12345", or a
# caption that is a JSON list, is a wrong column, not a value to keep.
TEXT_ONLY = ("url", "caption", "page_url")
# Sizes in pixels: a negative one is a broken record, not a size.
NON_NEGATIVE = ("width", "height", "original_width", "original_height")


def check(name: str, source: Any, values: pa.Array) -> tuple[pa.Array, list[tuple[int, str]]]:
    """Values of canonical column `name` that have the right type but are not valid become null,
    with a (position, detail) for a `bad_value` error row each: a text column fed by numbers,
    lists or objects, a null URL in a source that has a URL column, a negative size.

    Vectorised: only the flagged positions become Python values (a URL or caption column of
    a LAION part is 100,000 strings; converting them all cost more than writing the part).
    """
    import pyarrow.compute as pc

    problems: list[tuple[int, str]] = []
    if name in TEXT_ONLY:
        raw = source.combine_chunks() if isinstance(source, pa.ChunkedArray) else source
        if isinstance(raw, pa.Array):
            t = raw.type.value_type if pa.types.is_dictionary(raw.type) else raw.type
            textual = any(
                f(t) for f in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary)
            )
            wrong = [] if textual or pa.types.is_null(t) else _positions(raw.is_valid())
            originals = {i: raw[i].as_py() for i in wrong}
            kind = str(t)
        else:
            wrong = [i for i, v in enumerate(raw) if not isinstance(v, (str, bytes))]
            originals = {i: raw[i] for i in wrong}
            kind = ""
        for i in wrong:
            if originals[i] is not None:
                what = kind or type(originals[i]).__name__
                problems.append(
                    (i, f"{name}: {_short(originals[i])} is a {what}, not text; stored as null")
                )
        if name == "url" and isinstance(raw, pa.Array):  # a parquet column, not a sidecar key
            flagged = {i for i, _ in problems}
            nulls = _positions(values.is_null()) if values.null_count else []
            problems += [
                (i, "url is null: the record says nothing about where its image came from")
                for i in nulls
                if i not in flagged
            ]
    elif name in NON_NEGATIVE and values.null_count < len(values):
        low = pc.min(values).as_py()
        if low is not None and low < 0:
            problems += [
                (i, f"{name}: {values[i].as_py()} is negative; stored as null")
                for i in _positions(pc.fill_null(pc.less(values, 0), False))
            ]
    if not problems:
        return values, []
    drop = {i for i, _ in problems}
    kept = [None if i in drop else v for i, v in enumerate(values.to_pylist())]
    return pa.array(kept, type=values.type), sorted(problems)


def _positions(mask: pa.Array) -> list[int]:
    """Positions where a boolean array is true (the flagged rows are few; no pandas import)."""
    import pyarrow.compute as pc

    return pc.indices_nonzero(mask).to_pylist()


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
