"""Crawling and reading a crawl cache, against a server on 127.0.0.1 started here.

RFC 9309 2.3.1.2: "crawlers SHOULD follow at least five consecutive redirects, even across
authorities ... If a robots.txt file is reached within five consecutive redirects, the robots.txt
file MUST be fetched, parsed, and its rules followed in the context of the initial authority. If
there are more than five consecutive redirects, crawlers MAY assume that the robots.txt file is
unavailable." Plus: the robots.txt/ai.txt/tdmrep.json of every host an image URL redirects
through are read, and bodies an older crawl stored gzip-compressed are decoded.
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audit import optouts
from audit.optouts import decide, robots
from audit.optouts.cache import CrawlCache, Response, decoded_body
from audit.optouts.crawl import HostLimiter, fetch


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status, headers, body=b""):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self):
        host = (self.headers.get("Host") or "").split(":")[0]
        p = self.path
        if p.startswith("/hop/"):  # /hop/N redirects N more times, then serves robots rules
            n = int(p.split("/")[2])
            if n > 0:
                return self._send(302, [("Location", f"/hop/{n - 1}")])
            return self._send(
                200, [("Content-Type", "text/plain")], b"User-agent: *\nDisallow: /\n"
            )
        if p == "/loop-a":
            return self._send(301, [("Location", "/loop-b")])
        if p == "/loop-b":
            return self._send(301, [("Location", "/loop-a")])
        if host == "localhost":  # the CDN an image redirects to: it disallows GPTBot
            if p == "/robots.txt":
                return self._send(200, [], b"User-agent: GPTBot\nDisallow: /cdn/\n")
            if p.startswith("/cdn/"):
                return self._send(200, [("Content-Type", "image/png")])
            return self._send(404, [])
        if p == "/robots.txt":
            return self._send(200, [], b"User-agent: *\nAllow: /\n")
        if p.startswith("/img/"):
            port = self.server.server_address[1]
            return self._send(302, [("Location", f"http://localhost:{port}/cdn{p[4:]}")])
        return self._send(404, [])

    do_GET = _route
    do_HEAD = _route


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def get(url: str, kind: str = "robots"):
    return fetch(url, kind, limiter=HostLimiter(1000), allow_private=True, timeout=3.0)


def rules_of(resp) -> robots.RobotsFile:
    status, body = decide._fetch_status(resp)
    return robots.from_status(status, body)


def test_five_redirects_are_followed(server):
    r = get(f"{server}/hop/5")
    assert r.status == 200 and len(r.redirects) == 5 and r.final_url.endswith("/hop/0")
    assert rules_of(r).check("GPTBot", "/x")[0] is False  # the rules reached are followed


def test_six_redirects_mean_unavailable(server):
    r = get(f"{server}/hop/6")
    assert r.status == 302 and r.error is None and len(r.redirects) == 6
    rf = rules_of(r)
    assert rf.mode == "allow_all" and rf.check("GPTBot", "/x")[0] is True


def test_a_loop_means_unavailable_not_unreachable(server):
    r = get(f"{server}/loop-a")
    assert r.status == 301 and r.error is None
    assert rules_of(r).mode == "allow_all"
    # an older cache recorded the same outcome as an error string: still "unavailable"
    old = Response(f"{server}/robots.txt", "robots", None, error="more than 5 redirects")
    assert rules_of(old).mode == "allow_all"


def test_host_files_of_every_host_an_image_redirects_through(server, make_workspace, tmp_path):
    ws = make_workspace([None], urls=[f"{server}/img/a.png"])
    first = optouts.crawl(ws.root, tmp_path / "cache", rate=1000, allow_private=True)
    assert first["fetched"] == 7  # 3 host files + the image, then the CDN's 3 host files
    again = optouts.crawl(ws.root, tmp_path / "cache", rate=1000, allow_private=True)
    assert again["fetched"] == 0  # resumable: nothing new
    refresh = optouts.crawl(
        ws.root, tmp_path / "cache", rate=1000, allow_private=True, refresh=True
    )
    assert refresh["fetched"] == 7  # a refresh fetches the redirect hosts' files again too
    store = CrawlCache.open(tmp_path / "cache")
    port = server.rsplit(":", 1)[1]
    cdn = f"http://localhost:{port}"
    assert store.get("robots", cdn + "/robots.txt").status == 200  # fetched in the second pass
    img = store.get("image", f"{server}/img/a.png")
    assert img.redirects == [cdn + "/cdn/a.png"]
    s = optouts.compute(ws.root, cache=tmp_path / "cache")
    assert s["decisions"]["genai_training"] == {"reserved": 1}
    dec = pq.read_table(ws.path("optout/decisions.parquet")).to_pylist()
    genai = next(d for d in dec if d["use"] == "genai_training")
    assert genai["signal"] == "robots.txt" and genai["location"].startswith(cdn)
    assert "Disallow: /cdn/" in genai["evidence"]


def test_a_redirect_host_missing_from_the_cache_is_unchecked(tmp_path, make_workspace):
    a, b = "https://a.example", "https://b.example"
    ws = make_workspace([None], urls=[f"{a}/x.png"])
    store = CrawlCache(tmp_path / "c", {})
    store.add(
        [
            Response(a + f, k, 200, [], b"", final_url=a + f)
            for k, f in (
                ("robots", "/robots.txt"),
                ("ai.txt", "/ai.txt"),
                ("tdmrep", "/.well-known/tdmrep.json"),
            )
        ]
        + [
            Response(
                f"{a}/x.png",
                "image",
                200,
                [],
                None,
                final_url=f"{b}/x.png",
                redirects=[f"{b}/x.png"],
            )
        ]
    )
    (tmp_path / "c").mkdir()
    store.save()
    assert "redirects" in pq.read_schema(tmp_path / "c" / "responses.parquet").names
    optouts.compute(ws.root, cache=tmp_path / "c")
    cov = pq.read_table(ws.path("optout/coverage.parquet")).to_pylist()[0]
    assert cov["robots"] == "missing" and cov["tdmrep"] == "missing"
    dec = pq.read_table(ws.path("optout/decisions.parquet")).to_pylist()
    assert {d["decision"] for d in dec} == {"unchecked"}


def test_gzip_bodies_of_older_crawls_are_decoded(tmp_path):
    """A robots.txt sent with Content-Encoding: gzip and stored as received must not read as
    garbage (allow all): `Disallow: /` inside the gzip stream still disallows."""
    body = gzip.compress(b"User-agent: *\nDisallow: /\n")
    root = tmp_path / "c"
    root.mkdir()
    resp = Response(
        "https://g.example/robots.txt", "robots", 200, [("Content-Encoding", "gzip")], body
    )
    store = CrawlCache(root, {})
    store.add([resp])
    store.save()
    read = CrawlCache.open(root).host_file("robots", "https://g.example/x")
    assert read.body == b"User-agent: *\nDisallow: /\n"
    assert rules_of(read).check("GPTBot", "/x")[0] is False
    # bytes that are not gzip (a newer crawler decoded them already) are left alone
    assert decoded_body(b"User-agent: *", [("Content-Encoding", "gzip")]) == b"User-agent: *"
    # a gzip bomb is cut at the cap
    bomb = gzip.compress(b"\0" * (20 * 1024 * 1024))
    assert len(decoded_body(bomb, [("content-encoding", "gzip")])) <= 4 * 1024 * 1024
    # deflate (zlib-wrapped, RFC 9110 8.4.1.2)
    import zlib

    assert (
        decoded_body(zlib.compress(b"Disallow: /"), [("Content-Encoding", "deflate")])
        == b"Disallow: /"
    )


def test_cache_without_redirects_keeps_the_old_schema(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    store = CrawlCache(root, {})
    store.add([Response("https://a.example/x.png", "image", 200, [], None)])
    store.save()
    schema = pq.read_schema(root / "responses.parquet")
    assert "redirects" not in schema.names and schema.metadata[b"format"] == b"audit-crawl-cache/1"
    assert isinstance(pq.read_table(root / "responses.parquet"), pa.Table)
