"""The crawl cache: every HTTP response the consent stage reads, kept on disk, offline first.

`audit optout` never touches the network: it reads a cache folder filled by `audit optout crawl`,
imported from a WARC file (the field's archive format), or built by hand. The format:

`<cache>/responses.parquet`, one row per fetched resource:

| column | type | meaning |
|---|---|---|
| url | string | the URL as requested |
| nurl | string | `urls.normalise(url)`: the lookup key |
| kind | string | `image` (image URL, headers only), `page` (HTML page), `robots` (/robots.txt), `ai.txt` (/ai.txt), `tdmrep` (/.well-known/tdmrep.json) |
| status | int32 | final HTTP status after redirects; null when no response (see `error`) |
| headers | list<struct<name: string, value: string>> | every header line of the final response, separately, in order (never merged, so a second `X-Robots-Tag` line is not lost) |
| body | binary | the body, capped (robots/ai.txt/tdmrep/page); null for images (their bytes are in the workspace) |
| body_truncated | bool | the body was longer than the cap |
| final_url | string | the URL after redirects |
| fetched_at | string | ISO-8601 UTC time of the fetch |
| error | string | why there is no response (`timeout`, `refused: loopback address 127.0.0.1`, `dns: ...`); null on success |
| redirects | list<string> | the URLs the request was redirected to, in order (only present in caches where some response was redirected) |

A body stored compressed (older crawls asked for identity but some servers send gzip anyway, and
kept the bytes as received) is decoded when read: where the recorded `Content-Encoding` says gzip
or deflate and the bytes are compressed, up to `MAX_DECODED` bytes.

A later row for the same (kind, nurl) replaces an earlier one. `responses.parquet` carries the
format name `audit-crawl-cache/1` in its schema metadata.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.optouts import urls
from audit.workspace import atomic_path

KINDS = ("image", "page", "robots", "ai.txt", "tdmrep")
MAX_DECODED = 4 * 1024 * 1024
FORMAT = "audit-crawl-cache/1"
RESPONSES = "responses.parquet"
# Where each per-host file lives, relative to the origin.
HOST_FILES = {"robots": "/robots.txt", "ai.txt": "/ai.txt", "tdmrep": "/.well-known/tdmrep.json"}


@dataclass
class Response:
    """One fetched resource (or the reason it could not be fetched)."""

    url: str
    kind: str
    status: int | None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    fetched_at: str = ""
    error: str | None = None
    body_truncated: bool = False
    final_url: str | None = None
    redirects: list[str] = field(default_factory=list)

    @property
    def nurl(self) -> str:
        return urls.normalise(self.url) or self.url


def schema(redirects: bool = False) -> Any:
    """The cache's schema; the `redirects` column only when some response was redirected, so a
    cache without redirects stays byte-identical to one written before the column existed."""
    import pyarrow as pa

    header = pa.struct([("name", pa.string()), ("value", pa.string())])
    extra = [("redirects", pa.list_(pa.string()))] if redirects else []
    return pa.schema(
        [
            ("url", pa.string()),
            ("nurl", pa.string()),
            ("kind", pa.string()),
            ("status", pa.int32()),
            ("headers", pa.list_(header)),
            ("body", pa.binary()),
            ("body_truncated", pa.bool_()),
            ("final_url", pa.string()),
            ("fetched_at", pa.string()),
            ("error", pa.string()),
            *extra,
        ],
        metadata={"format": FORMAT},
    )


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class CrawlCache:
    """The responses of a cache folder, looked up by (kind, URL)."""

    def __init__(self, root: Path, responses: dict[tuple[str, str], Response]):
        self.root, self.responses = root, responses

    @classmethod
    def open(cls, root: str | os.PathLike[str], must_exist: bool = True) -> CrawlCache:
        """Read `<root>/responses.parquet` (an empty cache if absent and `must_exist` is False)."""
        import pyarrow.parquet as pq

        root = Path(root)
        path = root / RESPONSES
        if not path.exists():
            if must_exist:
                raise AuditError(
                    f"{path} not found: {root} is not a crawl cache. Fill one with "
                    f"`audit optout crawl WS --cache {root}` or `audit optout import-warc FILE --cache {root}`."
                )
            return cls(root, {})
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - any parquet failure means the same thing to the user
            raise AuditError(
                f"{path} is unreadable ({type(e).__name__}: {e}); re-crawl into a new folder."
            ) from e
        responses: dict[tuple[str, str], Response] = {}
        for r in rows:
            headers = [(h["name"], h["value"]) for h in (r["headers"] or [])]
            resp = Response(
                url=r["url"],
                kind=r["kind"],
                status=r["status"],
                headers=headers,
                body=decoded_body(r["body"], headers),
                fetched_at=r["fetched_at"] or "",
                error=r["error"],
                body_truncated=bool(r["body_truncated"]),
                final_url=r["final_url"],
                redirects=list(r.get("redirects") or []),
            )
            responses[(resp.kind, r["nurl"] or resp.nurl)] = resp
        return cls(root, responses)

    def get(self, kind: str, url: str) -> Response | None:
        norm = urls.normalise(url)
        return self.responses.get((kind, norm)) if norm else None

    def host_file(self, kind: str, url: str) -> Response | None:
        """The cached robots.txt / ai.txt / tdmrep.json of `url`'s origin."""
        origin = urls.origin(url)
        return self.get(kind, origin + HOST_FILES[kind]) if origin else None

    def add(self, responses: list[Response]) -> None:
        for r in responses:
            self.responses[(r.kind, r.nurl)] = r

    def save(self) -> Path:
        """Write every response to `<root>/responses.parquet` atomically."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [
            {
                "url": r.url,
                "nurl": key[1],
                "kind": r.kind,
                "status": r.status,
                "headers": [{"name": n, "value": v} for n, v in r.headers],
                "body": r.body,
                "body_truncated": r.body_truncated,
                "final_url": r.final_url,
                "fetched_at": r.fetched_at,
                "error": r.error,
                "redirects": r.redirects,
            }
            for key, r in sorted(self.responses.items())
        ]
        redirected = any(r["redirects"] for r in rows)
        if not redirected:
            for r in rows:
                del r["redirects"]
        path = self.root / RESPONSES
        with atomic_path(path) as tmp:
            table = pa.Table.from_pylist(rows, schema=schema(redirected))
            pq.write_table(table, tmp, compression="zstd")
        return path


def decoded_body(body: bytes | None, headers: list[tuple[str, str]]) -> bytes | None:
    """`body` decoded where the recorded Content-Encoding says gzip/deflate and it is compressed.

    Bytes that do not start like the named encoding are returned as they are: a newer crawler
    decodes while reading and keeps the header, and decoding twice must not corrupt the body.
    At most `MAX_DECODED` bytes come out (a gzip bomb costs nothing); a truncated stream gives
    what could be decoded.

    >>> import gzip
    >>> decoded_body(gzip.compress(b"Disallow: /"), [("Content-Encoding", "gzip")])
    b'Disallow: /'
    """
    import zlib

    if not body:
        return body
    codings = [
        c.strip().lower()
        for name, value in headers
        if name.strip().lower() == "content-encoding"
        for c in value.split(",")
        if c.strip().lower() not in ("", "identity")
    ]
    for coding in reversed(codings):  # the last coding applied is the first to undo
        if coding in ("gzip", "x-gzip") and body[:2] == b"\x1f\x8b":
            wbits = 16 + zlib.MAX_WBITS
        elif coding == "deflate" and body[:1] and (body[0] & 0x0F) == 8:
            wbits = zlib.MAX_WBITS  # zlib-wrapped, as RFC 9110 8.4.1.2 defines deflate
        else:
            return body
        try:
            body = zlib.decompressobj(wbits).decompress(body, MAX_DECODED)
        except zlib.error:
            return body
    return body


def kind_of(url: str, content_type: str | None) -> str:
    """The cache kind of a WARC record: host files by path, HTML pages by type, the rest images."""
    path = urls.path_and_query(url) or ""
    for kind, file in HOST_FILES.items():
        if path == file:
            return kind
    if content_type and content_type.split(";")[0].strip().lower() in (
        "text/html",
        "application/xhtml+xml",
    ):
        return "page"
    return "image"


def import_warc(
    warc: str | os.PathLike[str], cache: str | os.PathLike[str], max_bytes: int = 512 * 1024
) -> dict[str, Any]:
    """Add the HTTP responses of a WARC (or .warc.gz) file to a crawl cache.

    >>> import_warc("crawl.warc.gz", "indexes/sample-cache")  # doctest: +SKIP
    {'imported': 812, 'skipped': 3, 'cache': 'indexes/sample-cache/responses.parquet'}
    """
    from warcio.archiveiterator import ArchiveIterator

    if not Path(warc).is_file():
        raise AuditError(f"WARC file {warc} not found.")
    store = CrawlCache.open(cache, must_exist=False)
    added, skipped = [], 0
    with open(warc, "rb") as f:
        try:
            for record in ArchiveIterator(f):
                if record.rec_type != "response" or record.http_headers is None:
                    skipped += 1
                    continue
                url = record.rec_headers.get_header("WARC-Target-URI") or ""
                try:
                    status = int(record.http_headers.get_statuscode())
                except (TypeError, ValueError):
                    skipped += 1
                    continue
                headers = [(str(n), str(v)) for n, v in record.http_headers.headers]
                kind = kind_of(url, record.http_headers.get_header("Content-Type"))
                body = record.content_stream().read(max_bytes + 1)
                added.append(
                    Response(
                        url=url,
                        kind=kind,
                        status=status,
                        headers=headers,
                        body=None if kind == "image" else body[:max_bytes],
                        body_truncated=len(body) > max_bytes,
                        final_url=url,
                        fetched_at=record.rec_headers.get_header("WARC-Date") or now(),
                    )
                )
        except Exception as e:  # noqa: BLE001 - warcio raises many types on a damaged archive
            raise AuditError(
                f"{warc} is not a readable WARC file after {len(added)} records "
                f"({type(e).__name__}: {e})."
            ) from e
    store.add(added)
    path = store.save()
    return {"imported": len(added), "skipped": skipped, "cache": str(path)}


def export_warc(cache: str | os.PathLike[str], warc: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the cache's responses as WARC `response` records (fetch errors are left out)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    store = CrawlCache.open(cache)
    written = 0
    with atomic_path(warc) as tmp, open(tmp, "wb") as f:
        writer = WARCWriter(f, gzip=str(warc).endswith(".gz"))
        for r in store.responses.values():
            if r.status is None:
                continue
            body = r.body or b""
            # The stored body may be capped: drop length/encoding headers so readers trust the record.
            headers = [
                (n, v)
                for n, v in r.headers
                if n.lower() not in ("content-length", "transfer-encoding", "content-encoding")
            ]
            http = StatusAndHeaders(f"{r.status} -", headers, protocol="HTTP/1.1")
            record = writer.create_warc_record(
                r.url, "response", payload=io.BytesIO(body), http_headers=http, length=len(body)
            )
            writer.write_record(record)
            written += 1
    return {"exported": written, "warc": str(warc)}


# -- the bundled sample's signals ----------------------------------------------------------------
SAMPLE_TIME = "2025-01-01T00:00:00+00:00"


def sample_signals(sample_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """(Re)build `<sample_dir>/optout/`: two registries and a crawl cache for the sample's hosts.

    Deterministic: the same sample gives byte-identical files. Everything here is synthetic and
    says so (see `<sample_dir>/optout/README.md`): one opt-out of each kind, so the demo shows
    every signal. Rows are chosen by their position in `laion/sample.parquet`.

    >>> sample_signals("audit/data/sample")  # doctest: +SKIP
    {'registry_domains': 2, 'registry_urls': 6, 'responses': 642, ...}
    """
    import pyarrow.parquet as pq

    sample_dir = Path(sample_dir)
    table = pq.read_table(sample_dir / "laion" / "sample.parquet")
    cols = {c.lower(): c for c in table.column_names}
    image_urls = [str(u) for u in table.column(cols["url"]).to_pylist()]
    pages = (
        table.column(cols["page_url"]).to_pylist()
        if "page_url" in cols
        else [None] * len(image_urls)
    )
    out = sample_dir / "optout"
    out.mkdir(parents=True, exist_ok=True)

    domains = ["pictures.example.org", "*.unused-mirror.example"]
    (out / "registry-domains.txt").write_text(
        "# Synthetic domain opt-out registry for the bundled sample (one domain per line).\n"
        "# A domain covers its subdomains: pictures.example.org covers img.pictures.example.org.\n"
        + "\n".join(domains)
        + "\n",
        "utf-8",
    )
    # Every 40th openclipart row is listed by URL; the first one in a different spelling
    # (upper-case host, default port), which normalisation must still match.
    listed = [u for u in image_urls if "openclipart.org" in u][::40]
    lines = ["url,use"]
    for i, u in enumerate(listed):
        shown = u.replace("https://openclipart.org", "HTTPS://OpenClipart.org:443") if i == 0 else u
        lines.append(f"{shown},{'data_mining' if i % 3 == 2 else 'ai_training'}")
    (out / "registry-urls.csv").write_text("\n".join(lines) + "\n", "utf-8")

    responses = []
    origins = {o for o in (urls.origin(u) for u in image_urls) if o}
    for origin in sorted(origins):
        responses += _sample_host_files(origin)
    oc = 0
    for i, (u, page) in enumerate(zip(image_urls, pages, strict=True)):
        headers = [("Content-Type", "image/png" if u.endswith(".png") else "image/jpeg")]
        if "openclipart.org" in u:
            oc += 1
            if oc % 13 == 0:
                headers.append(("X-Robots-Tag", "noai, noimageai"))
            elif oc % 17 == 0:  # scoped to a bot we do not evaluate: no reservation
                headers.append(("X-Robots-Tag", "otherbot: noai"))
            elif oc % 19 == 0:  # the reservation is on the second header line only
                headers += [("X-Robots-Tag", "noarchive"), ("x-robots-tag", "GPTBot: NoAI")]
        responses.append(Response(u, "image", 200, headers, None, SAMPLE_TIME, final_url=u))
        if page:
            responses.append(_sample_page(page, i))
    store = CrawlCache(out / "cache", {})
    store.add(responses)
    (out / "cache").mkdir(exist_ok=True)
    store.save()
    (out / "README.md").write_text(_SAMPLE_README, "utf-8")
    return {
        "registry_domains": len(domains),
        "registry_urls": len(listed),
        "responses": len(responses),
        "cache": str(out / "cache" / RESPONSES),
    }


def _sample_host_files(origin: str) -> list[Response]:
    host = origin.split("://", 1)[1]
    robots, aitxt, tdm = (b"User-agent: *\nDisallow: /admin/\n", 200), (b"", 404), (b"", 404)
    if host == "www.example.net":
        robots = (
            b"# blog\nUser-agent: GPTBot\nUser-agent: CCBot\nDisallow: /blog/wp-content/\n\n"
            b"User-agent: *\nAllow: /\n",
            200,
        )
    elif host == "cdn.clipart-mirror.example.com":
        aitxt = (b"# Spawning ai.txt\nUser-Agent: *\nDisallow: *.png\nAllow: *.jpg\n", 200)
    elif host == "media.example.com":
        tdm = (
            b'[{"location": "/free-clipart/*", "tdm-reservation": 1, '
            b'"tdm-policy": "https://example.com/tdm-policy.json"}]',
            200,
        )
    elif host == "img.pictures.example.org":
        robots = (b"", 404)
    out = []
    for kind, (body, status) in (("robots", robots), ("ai.txt", aitxt), ("tdmrep", tdm)):
        url = origin + HOST_FILES[kind]
        ctype = "application/json" if kind == "tdmrep" else "text/plain"
        out.append(
            Response(url, kind, status, [("Content-Type", ctype)], body, SAMPLE_TIME, final_url=url)
        )
    return out


def _sample_page(page: str, i: int) -> Response:
    if "example.net" in page and i % 2 == 0:  # some blog posts are gone
        return Response(
            page,
            "page",
            404,
            [("Content-Type", "text/html")],
            b"<h1>Not found</h1>",
            SAMPLE_TIME,
            final_url=page,
        )
    meta = (
        '<meta name="robots" content="noimageai">'
        if i % 11 == 5
        else '<meta name="robots" content="index, follow">'
    )
    body = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>clip art {i}</title>{meta}</head>"
        f"<body><img src='image.png' alt='clip art'></body></html>"
    ).encode()
    return Response(
        page,
        "page",
        200,
        [("Content-Type", "text/html; charset=utf-8")],
        body,
        SAMPLE_TIME,
        final_url=page,
    )


_SAMPLE_README = """# Opt-out signals for the bundled sample (synthetic)

Everything in this folder is made up by `audit.optouts.sample_signals("audit/data/sample")`
to exercise the consent stage; no real site published these opt-outs.

- `registry-domains.txt`: a domain registry listing `pictures.example.org` (covers `img.pictures.example.org`).
- `registry-urls.csv`: every 40th openclipart image URL (`url,use`); the first in another spelling
  (upper-case host, `:443`) that URL normalisation must match.
- `cache/responses.parquet`: a crawl cache (format in `audit/optouts/cache.py`) with, per host,
  robots.txt / ai.txt / tdmrep.json, and a response per image and page URL:
  - `www.example.net/robots.txt` disallows GPTBot and CCBot under `/blog/wp-content/`;
  - `cdn.clipart-mirror.example.com/ai.txt` has `Disallow: *.png`;
  - `media.example.com/.well-known/tdmrep.json` reserves TDM for `/free-clipart/*`;
  - some openclipart image responses carry `X-Robots-Tag: noai, noimageai`, some a scoped
    `otherbot: noai` (not an agent we evaluate: no reservation), some `GPTBot: NoAI` on a second line;
  - every 11th page has `<meta name="robots" content="noimageai">`; half the example.net pages answer 404.

Run: `audit optout indexes/sample --registry audit/data/sample/optout/registry-domains.txt
--registry audit/data/sample/optout/registry-urls.csv --cache audit/data/sample/optout/cache`,
then `audit filter indexes/sample --out clean.parquet`.
"""
