"""Opt-out registries: lists of domains and URLs whose owners reserved them, joined in duckdb.

A registry is a file given with `--registry` (repeatable); a path that does not exist is a bad
argument (`AuditError`), never an empty list. Four kinds of rule:

| kind | text form | table column | matches |
|---|---|---|---|
| exact URL | `https://a.example.com/x.png`, `a.example.com/x.png` | `url` | that URL after normalisation, any scheme |
| URL prefix | `https://a.example.com/photos/*` (a final `*`) | `url_prefix` (or a `url` ending in `*`) | every URL starting with it |
| host | `host:a.example.com` | `host` | URLs on exactly that host |
| domain | `example.com`, `*.example.com`, `.example.com` | `domain` | the domain and every subdomain |
| registrable domain | `site:img.example.co.uk` | `site` | every host under the same registrable domain (Public Suffix List): here all of `example.co.uk` |

Text (`.txt`, `.lst`, anything not below): one entry per line, `#` starts a comment, blank lines
ignored; an optional second word names the use (`example.com data_mining`). Spawning's
do-not-train exports (one URL or domain per line) are read as this format. CSV (`.csv`, `.tsv`)
and parquet (`.parquet`): the columns above (any case), optional `use` column.

The use defaults to `ai_training` (a do-not-train list), which also reserves `genai_training`;
a `use` of `data_mining` reserves all three uses.

Matching (documented in README "Consent"):
- domain rules match the host and every subdomain (`example.com` matches `a.example.com`, not
  `badexample.com`), for the image URL and for the page URL; hosts are exploded into their
  suffixes (`a.b.example.com` -> `a.b.example.com`, `b.example.com`, `example.com`, `com`)
  and equi-joined against the rules, so the join is a hash join, not a scan per rule;
- URL rules match after normalisation (`urls.normalise`: case of scheme and host, IDNA,
  default port, percent-encoding, fragment) and ignoring the scheme, so an opt-out of
  `http://x/a.png` also covers `https://x/a.png`. Common URLs are normalised with SQL string
  functions; anything unusual (percent signs, ports, non-ASCII, dot segments) goes through
  `urls.normalise` as a duckdb Python function, so both paths give the same key. URL prefix
  rules compare the same keys with `starts_with`.
- A registry that exists but cannot be read (bad format, no entries) is *not* treated as
  empty: every row gets an `unchecked` signal for it and the summary carries the error.
- Rules that matched no row are counted per registry in the summary, with examples, so a
  mistyped rule does not pass silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.optouts import urls
from audit.optouts.signals import USES

DEFAULT_USE = "ai_training"

# A URL is normalised in SQL only when it matches this (lower/upper-case scheme and host,
# plain ASCII labels, no port, no percent sign, no fragment, only unreserved and reserved
# characters): for those, normalising = lower-casing scheme and host and "/" for an empty path.
# Dot segments ("/./", "/../") are sent to Python too.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PCHARS = r"[A-Za-z0-9._~!$&'()*+,;=:@/-]"
FAST_URL = rf"[hH][tT][tT][pP][sS]?://{_LABEL}(\.{_LABEL})*(/{_PCHARS}*)?(\?({_PCHARS}|\?)+)?"
DOT_SEGMENT = r"/\.\.?(/|\?|$)"


@dataclass
class Registry:
    """One registry file, loaded: rules as lists, or the reason it could not be read."""

    path: str  # as the records name it (rule locations, errors, the stage's parameters)
    domains: list[tuple[str, str, str]]  # (domain key, use, where: "file line N")
    urls: list[tuple[str, str, str]]  # (url key, use, where)
    error: str | None = None
    skipped: int = 0  # entries that were not a domain or a URL
    prefixes: list[tuple[str, str, str]] = field(
        default_factory=list
    )  # (url key prefix, use, where)
    hosts: list[tuple[str, str, str]] = field(default_factory=list)  # (host, use, where)
    file: str = ""  # where it is read here, when that differs from `path`

    @property
    def rules(self) -> int:
        return len(self.domains) + len(self.urls) + len(self.prefixes) + len(self.hosts)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def unreadable_signal(self) -> str:
        # We cannot tell from an unreadable file whether it listed domains or URLs; the name decides
        # which signal carries its "unchecked" rows (documented).
        return "registry-domain" if "domain" in self.name.lower() else "registry-url"


def load(path: str | os.PathLike[str], recorded_as: str | None = None) -> Registry:
    """Read a registry file. Never raises for a bad file: the `error` field says what went wrong.
    `recorded_as`: the name its rules and errors give the file (the optout stage passes the
    path relative to the workspace, `Workspace.relative`); default `path`.

    >>> reg = load("audit/data/sample/optout/registry-domains.txt")
    >>> reg.error is None and len(reg.domains) > 0
    True
    """
    file = str(path)
    path = recorded_as or file
    reg = Registry(path, [], [], file=file)
    try:
        suffix = Path(file).suffix.lower()
        if suffix in (".csv", ".tsv", ".parquet"):
            _load_table(reg, suffix)
        else:
            _load_text(reg)
    except Exception as e:  # noqa: BLE001 - pyarrow raises its own types for corrupt files
        reg.domains, reg.urls, reg.prefixes, reg.hosts = [], [], [], []
        reg.error = f"{path}: {type(e).__name__}: {e}"
    if reg.error is None and not reg.rules:
        reg.error = (
            f"{path}: no domain or URL entries found (an empty registry would allow everything)"
        )
    return reg


def _add(reg: Registry, entry: str, use: str | None, where: str) -> None:
    entry = entry.strip().strip("\ufeff")
    use = (use or DEFAULT_USE).strip().lower() or DEFAULT_USE
    if use not in USES:
        reg.skipped += 1
        return
    if not entry:
        return
    if entry.lower().startswith("site:"):
        host = domain_key(entry[5:])
        key = registrable_domain(host) if host else None
        if key is None:
            reg.skipped += 1
            return
        reg.domains.append((key, use, where))
    elif entry.lower().startswith("host:"):
        key = domain_key(entry[5:])
        if key is None:
            reg.skipped += 1
            return
        reg.hosts.append((key, use, where))
    elif "/" in entry:
        prefix = entry.endswith("*")
        entry = entry.rstrip("*") if prefix else entry
        key = url_key(entry if "://" in entry else "https://" + entry)
        if key is None:
            reg.skipped += 1
            return
        if prefix:
            # "a.example.com/photos/" normalises to itself; a bare "a.example.com*" to "a.example.com/"
            reg.prefixes.append((key, use, where))
        else:
            reg.urls.append((key, use, where))
    else:
        key = domain_key(entry)
        if key is None:
            reg.skipped += 1
            return
        reg.domains.append((key, use, where))


def _load_text(reg: Registry) -> None:
    with open(reg.file or reg.path, "rb") as f:
        data = f.read()
    text = data.decode("utf-8-sig", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        words = line.split()
        _add(reg, words[0], words[1] if len(words) > 1 else None, f"{reg.path} line {n}")


def _load_table(reg: Registry, suffix: str) -> None:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if suffix == ".parquet":
        table = pq.read_table(reg.file or reg.path)
    else:
        opts = pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
        convert = pcsv.ConvertOptions(strings_can_be_null=True)
        table = pcsv.read_csv(reg.file or reg.path, parse_options=opts, convert_options=convert)
    cols = {c.lower(): c for c in table.column_names}
    found = [cols[c] for c in ("url", "url_prefix", "host", "domain", "site") if c in cols]
    if not found:
        raise ValueError(
            "no 'url', 'url_prefix', 'host', 'domain' or 'site' column "
            f"(columns: {', '.join(table.column_names)})"
        )
    uses = table.column(cols["use"]).to_pylist() if "use" in cols else [None] * table.num_rows
    first_data_line = 1 if suffix == ".parquet" else 2  # CSV line 1 is the header
    for col in found:
        for i, value in enumerate(table.column(col).to_pylist()):
            if value is None or str(value).strip() == "":
                continue
            value = str(value)
            where = f"{reg.path} row {i + first_data_line}"
            kind = col.lower()
            if kind in ("domain", "host", "site") and "/" in value:
                reg.skipped += 1  # a domain column holding a URL is a data error, not a rule
                continue
            if kind == "url" and "/" not in value:
                value += "/"  # a bare host in a url column is the site's root URL
            if kind == "url_prefix":
                value = (value if "/" in value else value + "/").rstrip("*") + "*"
            elif kind in ("host", "site"):
                value = f"{kind}:{value}"
            _add(reg, value, uses[i], where)


def domain_key(entry: str) -> str | None:
    """The matching key of a domain rule: lower-case IDNA host without `*.`/leading/trailing dots."""
    entry = entry.strip().lower()
    if entry.startswith("*."):
        entry = entry[2:]
    entry = entry.strip(".")
    if not entry or any(c in entry for c in " /\\@:?#\x00"):
        return None
    return urls.host("http://" + entry)


def registrable_domain(host: str) -> str | None:
    """The registrable domain of `host` by the Public Suffix List (offline copy), or None for a
    public suffix itself (`co.uk` names no one's site).

    >>> registrable_domain("img.example.co.uk")
    'example.co.uk'
    """
    from publicsuffixlist import PublicSuffixList

    global _PSL
    if _PSL is None:
        _PSL = PublicSuffixList()
    return _PSL.privatesuffix(host)


_PSL: Any = None


def url_key(url: str) -> str | None:
    """The matching key of a URL: `urls.normalise` without the scheme ("host/path?query")."""
    norm = urls.normalise(url)
    if not norm or "://" not in norm:
        return None
    return norm.split("://", 1)[1]


def connect_rules(registries: list[Registry]) -> Any:
    """A duckdb connection holding every readable registry as tables `reg_domains`, `reg_urls`.

    The connection also has `py_url_key` (Python `url_key`) for the URLs `keys_sql` sends to it.
    """
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    con.execute("SET threads TO 2")
    # duckdb's stubs list only its enum for null_handling; the documented string form works
    con.create_function(  # type: ignore[call-overload]
        "py_url_key",
        _safe_url_key,
        ["VARCHAR"],
        "VARCHAR",
        null_handling="special",
        side_effects=False,
    )
    # host of a url key: everything before the first "/", without user info and port
    con.execute(
        "CREATE MACRO khost(k) AS regexp_replace(regexp_replace(split_part(k, '/', 1), '^.*@', ''), ':[0-9]*$', '')"
    )
    con.execute(
        "CREATE MACRO suffixes(h) AS [array_to_string(list_slice(string_split(h, '.'), i, "
        "len(string_split(h, '.'))), '.') for i in range(1, len(string_split(h, '.')) + 1)]"
    )
    doms, uls, pfx, hsts = [], [], [], []
    for i, reg in enumerate(registries):
        if reg.error:
            continue
        doms += [(d, u, w, i) for d, u, w in reg.domains]
        uls += [(k, u, w, i) for k, u, w in reg.urls]
        pfx += [(k, u, w, i) for k, u, w in reg.prefixes]
        hsts += [(k, u, w, i) for k, u, w in reg.hosts]
    rule = pa.schema(
        [("key", pa.string()), ("use", pa.string()), ("entry", pa.string()), ("reg", pa.int32())]
    )
    tables = (("reg_domains", doms), ("reg_urls", uls), ("reg_prefixes", pfx), ("reg_hosts", hsts))
    for name, rows in tables:
        arrow = pa.Table.from_arrays(
            [pa.array([r[j] for r in rows], rule.field(j).type) for j in range(4)], schema=rule
        )
        con.register(f"{name}_arrow", arrow)
        # A prefix rule joins on its host first (a hash join), then compares the prefix: a
        # starts_with join alone would compare every row with every prefix rule.
        extra = ", khost(key) AS host" if name == "reg_prefixes" else ""
        con.execute(f"CREATE TABLE {name} AS SELECT *{extra} FROM {name}_arrow")
        con.unregister(f"{name}_arrow")
    return con


def keys_sql(column: str, source: str) -> str:
    """SQL selecting (row_id, k): the URL key of `column` of `source`, rows without a key dropped.

    The common case is normalised with SQL string functions, the rest by `py_url_key`; the
    regular expression runs once per row (a subquery column), not once per use.
    """
    fast = FAST_URL.replace("'", "''")
    return f"""SELECT row_id, CASE WHEN fast THEN lower(s.h) || CASE WHEN s.p = '' THEN '/' ELSE s.p END || s.q
                 ELSE py_url_key(u) END AS k
               FROM (SELECT row_id, {column} AS u,
                       regexp_full_match({column}, '{fast}') AND NOT regexp_matches({column}, '{DOT_SEGMENT}') AS fast,
                       regexp_extract({column}, '^[^:]*://([^/?]*)([^?]*)(.*)$', ['h', 'p', 'q']) AS s
                     FROM {source} WHERE {column} IS NOT NULL)"""


def _safe_url_key(url: str) -> str | None:
    try:
        return url_key(url)
    except Exception:  # noqa: BLE001 - a hostile URL must become "no key", never abort the join
        return None


def match(con: Any, rows: Any) -> list[dict[str, Any]]:
    """Registry hits for an Arrow table of rows (`row_id`, `url`, `page_url`).

    One dict per hit: row_id, signal, use, location (registry file and line), evidence (the
    rule and what it matched), column (`url` or `page_url`).
    """
    con.register("rows_in", rows)
    try:
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE keyed AS
               SELECT row_id, col, k, khost(k) AS host FROM (
                 SELECT row_id, 'url' AS col, k FROM ({keys_sql("url", "rows_in")})
                 UNION ALL
                 SELECT row_id, 'page_url', k FROM ({keys_sql("page_url", "rows_in")}))
               WHERE k IS NOT NULL"""
        )
        # Host suffixes are exploded once per distinct host (a column, so the macro's repeated use
        # of its argument costs nothing), then equi-joined with the domain rules.
        hits = con.execute(
            """WITH hosts AS (SELECT DISTINCT host FROM keyed),
                    sfx AS (SELECT host, unnest(suffixes(host)) AS s FROM hosts),
                    hm AS (SELECT sfx.host, d.key, d.use, d.entry FROM sfx JOIN reg_domains d ON d.key = sfx.s)
               SELECT keyed.row_id, 'registry-domain' AS signal, hm.use, hm.entry,
                      'domain rule ' || hm.key || ' matches host ' || hm.host || ' of ' || keyed.col, keyed.col
               FROM keyed JOIN hm ON keyed.host = hm.host
               UNION ALL
               SELECT keyed.row_id, 'registry-domain', h.use, h.entry,
                      'host rule ' || h.key || ' matches host of ' || keyed.col, keyed.col
               FROM keyed JOIN reg_hosts h ON h.key = keyed.host
               UNION ALL
               SELECT keyed.row_id, 'registry-url', u.use, u.entry,
                      'URL rule ' || u.key || ' matches ' || keyed.col, keyed.col
               FROM keyed JOIN reg_urls u ON u.key = keyed.k
               UNION ALL
               SELECT keyed.row_id, 'registry-url', p.use, p.entry,
                      'URL prefix rule ' || p.key || '* matches ' || keyed.col, keyed.col
               FROM keyed JOIN reg_prefixes p ON keyed.host = p.host AND starts_with(keyed.k, p.key)
               ORDER BY 1, 2, 6"""
        ).fetchall()
    finally:
        con.unregister("rows_in")
    return [
        {
            "row_id": r[0],
            "signal": r[1],
            "use": r[2],
            "location": r[3],
            "evidence": r[4],
            "column": r[5],
        }
        for r in hits
    ]


def unmatched(reg: Registry, matched: set[str], examples: int = 20) -> dict[str, Any]:
    """How many of `reg`'s rules matched no row (`matched`: the `location`s of every hit), with
    the first `examples` of them and a hint for URL rules that look like prefixes."""
    rules = [
        (kind, key, where)
        for kind, items in (
            ("url", reg.urls),
            ("url_prefix", reg.prefixes),
            ("host", reg.hosts),
            ("domain", reg.domains),
        )
        for key, _use, where in items
    ]
    missed = [r for r in rules if r[2] not in matched]
    shown = []
    for kind, key, where in missed[:examples]:
        hint = (
            " (ends with '/': a URL prefix rule needs a final '*')"
            if kind == "url" and key.endswith("/")
            else ""
        )
        shown.append(f"{where}: {kind} {key}{hint}")
    return {"rules": len(rules), "unmatched": len(missed), "examples": shown}
