"""The crawler behind `audit optout crawl`: fills a crawl cache for a workspace's hosts, politely.

For every origin (scheme://host:port) of the workspace's image URLs it fetches `/robots.txt`,
`/ai.txt` and `/.well-known/tdmrep.json`; for every image URL a HEAD request (GET with the body
discarded when HEAD is refused) for its headers; for every page URL a GET of the HTML. What it
promises:

- an honest user agent (`DEFAULT_AGENT`, overridable with `agent`);
- at most `rate` requests per second per host (slots are handed out under a lock, so threads
  never burst), a socket timeout and an overall deadline of `timeout` seconds per request
  (a server dripping one byte at a time cannot hold a worker), bodies capped at `max_bytes`,
  gzip and deflate bodies decoded under the same cap (a compression bomb stops at the cap);
- at most 5 consecutive redirects (RFC 9309 2.3.1.2: "crawlers SHOULD follow at least five
  consecutive redirects"), each hop checked again; a sixth redirect or a loop stops there and
  the 3xx answer is recorded (for robots.txt that means "unavailable": allow), with every URL
  redirected to kept in `redirects`, so the consent stage can read the robots.txt, ai.txt and
  tdmrep.json of every host an image URL went through (fetched in a second pass);
- it refuses every address that is not globally routable (`refusal`: private, loopback,
  link-local, 100.64.0.0/10, multicast, reserved, site-local, and the IPv4 address inside an
  IPv4-mapped, 6to4, Teredo or NAT64 one): a
  host is resolved first, every address is checked with `ipaddress`, and the connection goes
  to the checked address (no second lookup an attacker's DNS could answer differently).
  `allow_private=True` lifts this, for tests against a server on 127.0.0.1 only.

Already cached URLs are skipped unless `refresh=True`, so an interrupted crawl resumes; the
cache is saved every `save_every` responses. Fetch failures are rows of the cache (`error`),
never exceptions.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from audit.errors import AuditError
from audit.optouts import urls
from audit.optouts.cache import HOST_FILES, CrawlCache, Response, now
from audit.progress import track
from audit.workspace import Workspace, atomic_write_json

DEFAULT_AGENT = "audit-dataset-auditor/0.1 (+https://github.com/audit-dataset-auditor/audit)"
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)


class HostLimiter:
    """At most `rate` requests per second per host: each request books the next free slot."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next: dict[str, float] = {}
        self.lock = threading.Lock()

    def wait(self, host: str) -> None:
        with self.lock:
            start = max(time.monotonic(), self.next.get(host, 0.0))
            self.next[host] = start + self.interval
        delay = start - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def check_address(host: str, port: int, allow_private: bool) -> tuple[str | None, str | None]:
    """Resolve `host`; (address to connect to, None) or (None, why it is refused)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as e:
        return None, f"dns: {e}"
    if not infos:
        return None, "dns: no address"
    for info in infos:
        why = refusal(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
        if why and not allow_private:
            return None, f"refused: {why} (pass allow_private=True only in tests)"
    return str(infos[0][4][0]), None


# IPv6 forms that carry an IPv4 address a router may deliver to: NAT64 (RFC 6052) and its
# local-use prefix (RFC 8215). IPv4-mapped, 6to4 and Teredo have `ipaddress` properties.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why the crawler must not connect to `ip`, or None if it is globally routable.

    Everything `ipaddress` does not call global is refused (100.64.0.0/10 shared address
    space, where cloud metadata services live, included), and so are multicast and
    site-local, which it does; an IPv6 address that embeds an IPv4 one is judged by that too.
    """
    embedded: list[ipaddress.IPv4Address] = []
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return refusal(ip.ipv4_mapped)  # the address the socket really reaches
        if ip.sixtofour:
            embedded.append(ip.sixtofour)
        if ip.teredo:
            embedded.extend(ip.teredo)
        if any(ip in net for net in _NAT64):  # ::/8 is "reserved": judge what it reaches
            why = refusal(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
            return f"{why} via NAT64 {ip}" if why else None
    for flag, label in (
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_private", "private"),
        ("is_multicast", "multicast"),
        ("is_reserved", "reserved"),
        ("is_unspecified", "unspecified"),
        ("is_site_local", "site-local"),
    ):
        if getattr(ip, flag, False):
            return f"{label} address {ip}"
    for v4 in embedded:
        why = refusal(v4)
        if why:
            return f"{why} embedded in {ip}"
    if not ip.is_global:
        return f"not globally routable address {ip}"
    return None


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to an already checked address, with the real host in the Host header."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = self.raw_sock = socket.create_connection(
            (self.address, self.port), self.timeout
        )


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = self.raw_sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def fetch(
    url: str,
    kind: str,
    *,
    limiter: HostLimiter,
    timeout: float = 10.0,
    max_bytes: int = 512 * 1024,
    agent: str = DEFAULT_AGENT,
    allow_private: bool = False,
) -> Response:
    """Fetch one URL for the cache; every failure is a Response with `error` set."""
    deadline = time.monotonic() + timeout
    method = "HEAD" if kind == "image" else "GET"
    current = url
    hops: list[str] = []  # URLs redirected to, in order
    while True:
        try:
            parts = urlsplit(current)
            scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
        except ValueError as e:
            return _failed(url, kind, f"malformed URL: {e}", current, hops)
        if scheme not in ("http", "https") or not host:
            return _failed(url, kind, f"unsupported URL {current!r}", current, hops)
        port = port or (443 if scheme == "https" else 80)
        address, refused = check_address(host, port, allow_private)
        if refused:
            return _failed(url, kind, refused, current, hops)
        limiter.wait(host)
        if time.monotonic() > deadline:
            return _failed(url, kind, "timeout", current, hops)
        conn_cls = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
        conn = conn_cls(host, port, address, timeout=max(0.1, deadline - time.monotonic()))  # type: ignore[arg-type]
        # The socket timeout bounds each wait; this watchdog bounds the whole exchange, so a server
        # dripping its headers or body one byte at a time cannot hold a worker past the deadline.
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _abort, args=(conn,))
        watchdog.daemon = True
        watchdog.start()
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request(
                method,
                target,
                headers={
                    "User-Agent": agent,
                    "Accept-Encoding": "identity",
                    "Accept": "*/*",
                    "Connection": "close",
                },
            )
            resp = conn.getresponse()
            headers = [(str(n), str(v)) for n, v in resp.msg.items()]
            status = resp.status
            if status in _REDIRECTS and resp.getheader("Location"):
                nxt = urljoin(current, resp.getheader("Location"))
                seen = {urls.normalise(u) or u for u in (url, *hops)}
                if len(hops) < MAX_REDIRECTS and (urls.normalise(nxt) or nxt) not in seen:
                    hops.append(nxt)
                    current = nxt
                    continue
                # A sixth redirect, or a loop: stop and keep the 3xx answer (see module doc).
                return Response(
                    url=url,
                    kind=kind,
                    status=status,
                    headers=headers,
                    fetched_at=now(),
                    final_url=current,
                    redirects=[*hops, nxt],
                )
            if method == "HEAD" and status in (405, 501):
                method = "GET"  # some servers refuse HEAD; GET and discard the body
                continue
            body, truncated = None, False
            if kind != "image" and method == "GET":
                body, truncated = _read_capped(resp, max_bytes, deadline)
            return Response(
                url=url,
                kind=kind,
                status=status,
                headers=headers,
                body=body,
                fetched_at=now(),
                body_truncated=truncated,
                final_url=current,
                redirects=hops,
            )
        except (OSError, http.client.HTTPException, ssl.SSLError) as e:
            late = time.monotonic() >= deadline - 0.01
            reason = (
                "timeout"
                if late or isinstance(e, TimeoutError)
                else f"connection: {type(e).__name__}: {e}"
            )
            return _failed(url, kind, reason, current, hops)
        finally:
            watchdog.cancel()
            conn.close()


def _read_capped(resp: Any, max_bytes: int, deadline: float) -> tuple[bytes, bool]:
    """The body, decoded if it is gzip or deflate, and whether it was cut at `max_bytes`.

    The cap applies to the decoded bytes (a small compressed bomb cannot fill memory: zlib
    is asked for at most what is still allowed) and to the bytes read from the socket.
    """
    decoder = _decoder(resp.getheader("Content-Encoding"))
    chunks, total, received, first = [], 0, 0, True
    while total <= max_bytes and received <= max_bytes:
        chunk = resp.read1(min(65536, max_bytes + 1 - received))  # one recv: what has arrived
        if not chunk:
            break
        received += len(chunk)
        if decoder is not None:
            try:
                chunk = decoder.decompress(chunk, max_bytes + 1 - total)
            except zlib.error as e:
                if not (first and decoder.wbits == zlib.MAX_WBITS):
                    raise http.client.HTTPException(f"undecodable body: {e}") from e
                # "deflate" is meant to be zlib-wrapped, but some servers send raw deflate
                decoder = _Decoder(-zlib.MAX_WBITS)
                chunk = decoder.decompress(chunk, max_bytes + 1 - total)
            first = False
        chunks.append(chunk)
        total += len(chunk)
        if decoder is not None and decoder.obj.eof:
            break
    if time.monotonic() >= deadline - 0.01:
        raise TimeoutError("deadline")  # the watchdog cut the connection: the body is incomplete
    data = b"".join(chunks)
    return data[:max_bytes], total > max_bytes or received > max_bytes


class _Decoder:
    """A streaming zlib decoder that remembers its window setting (to retry raw deflate)."""

    def __init__(self, wbits: int):
        self.wbits, self.obj = wbits, zlib.decompressobj(wbits)

    def decompress(self, data: bytes, limit: int) -> bytes:
        # at most `limit` bytes out; what zlib could not emit stays in `unconsumed_tail`, and
        # is never expanded, because the caller stops once `limit` is reached
        return self.obj.decompress(data, max(1, limit))


def _decoder(encoding: str | None) -> _Decoder | None:
    enc = (encoding or "").strip().lower()
    if enc in ("gzip", "x-gzip"):
        return _Decoder(16 + zlib.MAX_WBITS)
    if enc == "deflate":
        return _Decoder(zlib.MAX_WBITS)
    return None  # identity, or an encoding audit does not decode: kept as sent


def _abort(conn: http.client.HTTPConnection) -> None:
    # `conn.sock` is None once the response owns the connection; the raw socket is still there.
    sock = getattr(conn, "raw_sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: nothing left to interrupt


def _failed(url: str, kind: str, error: str, final: str, hops: list[str] | None = None) -> Response:
    return Response(
        url=url,
        kind=kind,
        status=None,
        fetched_at=now(),
        error=error,
        final_url=final,
        redirects=list(hops or []),
    )


def targets(ws: Workspace) -> list[tuple[str, str]]:
    """(kind, URL) pairs to fetch for the workspace, in a stable order, each once."""
    import pyarrow.parquet as pq

    seen: set[tuple[str, str]] = set()
    out: list[tuple[str, str]] = []

    def add(kind: str, url: str | None) -> None:
        norm = urls.normalise(url) if url else None
        if norm and (kind, norm) not in seen:
            seen.add((kind, norm))
            out.append((kind, url))  # type: ignore[arg-type]

    for part in ws.require_parts():
        path = ws.path(part.path)
        cols = [c for c in ("url", "page_url") if c in pq.read_schema(path).names]
        table = pq.read_table(path, columns=cols).to_pydict()
        for url in table.get("url", []):
            origin = urls.origin(url) if url else None
            if origin:
                for kind, file in HOST_FILES.items():
                    add(kind, origin + file)
            add("image", url)
        for page in table.get("page_url", []):
            add("page", page)
    return out


def hop_host_files(
    store: CrawlCache, refetch: set[tuple[str, str]] | None = None
) -> list[tuple[str, str]]:
    """(kind, URL) of the host files of every origin an image URL was redirected through that
    the cache does not hold yet (or, with `refetch` - a refresh - that this run has not fetched
    yet: the set of (kind, URL) it did), in a stable order."""
    out, seen = [], set()
    for (kind, _), resp in sorted(store.responses.items()):
        if kind != "image":
            continue
        for hop in [*resp.redirects, resp.final_url or ""]:
            origin = urls.origin(hop) if hop else None
            if not origin or origin in seen:
                continue
            seen.add(origin)
            for file_kind, file in HOST_FILES.items():
                target = (file_kind, origin + file)
                if refetch is not None and target not in refetch:
                    out.append(target)
                elif store.get(*target) is None:
                    out.append(target)
    return out


def crawl(
    ws_root: str | Path,
    cache: str | Path,
    rate: float = 1.0,
    timeout: float = 10.0,
    max_bytes: int = 512 * 1024,
    agent: str = DEFAULT_AGENT,
    workers: int = 8,
    allow_private: bool = False,
    refresh: bool = False,
    save_every: int = 500,
) -> dict[str, Any]:
    """Fill the crawl cache `cache` for every host, image and page of the workspace.

    >>> crawl("indexes/mydata", "indexes/mydata-cache", rate=0.5)  # doctest: +SKIP
    {'targets': 1210, 'fetched': 1210, 'cached_before': 0, 'errors': {'timeout': 3}, ...}
    """
    if rate <= 0 or timeout <= 0 or max_bytes <= 0 or workers <= 0:
        raise AuditError("rate, timeout, max_bytes and workers must be positive numbers.")
    ws = Workspace.open(ws_root)
    store = CrawlCache.open(cache, must_exist=False)
    store.root.mkdir(parents=True, exist_ok=True)
    wanted = targets(ws)
    todo = [(k, u) for k, u in wanted if refresh or store.get(k, u) is None]
    cached_before = len(wanted) - len(todo)
    hosts = {urlsplit(u).hostname for _, u in todo}
    limiter = HostLimiter(rate)
    started = time.monotonic()
    errors: dict[str, int] = {}
    fetched = 0
    # Pass 1: the workspace's URLs; pass 2: host files of the hosts image URLs redirected to.
    for rnd in range(2):
        if rnd == 1:
            done = {(k, u) for k, u in wanted} if refresh else None
            todo = hop_host_files(store, done)
            wanted += todo
            hosts |= {urlsplit(u).hostname for _, u in todo}
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(
                    fetch,
                    u,
                    k,
                    limiter=limiter,
                    timeout=timeout,
                    max_bytes=max_bytes,
                    agent=agent,
                    allow_private=allow_private,
                )
                for k, u in todo
            ]
            label = "crawl" if rnd == 0 else "crawl redirect hosts"
            for fut in track(as_completed(futures), total=len(futures), description=label):
                resp = fut.result()
                store.add([resp])
                fetched += 1
                if resp.error:
                    reason = resp.error.split(":", 1)[0]
                    errors[reason] = errors.get(reason, 0) + 1
                if fetched % save_every == 0:
                    store.save()
    store.save()
    summary = {
        "targets": len(wanted),
        "fetched": fetched,
        "cached_before": cached_before,
        "errors": errors,
        "hosts": len(hosts),
        "seconds": round(time.monotonic() - started, 2),
        "agent": agent,
        "rate": rate,
        "cache": str(store.root / "responses.parquet"),
    }
    atomic_write_json(store.root / "crawl.json", {"finished": now(), **summary})
    return summary
