"""The crawler against a server on 127.0.0.1 started here: cache contents, rate limit, timeouts,
size caps, redirects, refusal of private addresses; WARC export/import round trip."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from conftest import encode, synthetic_image

from audit import optouts
from audit.cli import cli
from audit.optouts.cache import CrawlCache
from audit.optouts.crawl import DEFAULT_AGENT, HostLimiter, check_address, fetch


class Handler(BaseHTTPRequestHandler):
    log: list[tuple[float, str, str, str]] = []  # (time, method, path, user agent)

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes, head: bool) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, head: bool) -> None:
        Handler.log.append(
            (time.monotonic(), self.command, self.path, self.headers.get("User-Agent", ""))
        )
        p = self.path
        if p == "/robots.txt":
            return self._send(
                200, [("Content-Type", "text/plain")], b"User-agent: GPTBot\nDisallow: /\n", head
            )
        if p == "/ai.txt":
            return self._send(
                200, [("Content-Type", "text/plain")], b"User-agent: *\nDisallow: *.png\n", head
            )
        if p.startswith("/img/head405") and head:
            return self._send(405, [], b"", head)
        if p.startswith("/img/"):
            return self._send(
                200,
                [
                    ("Content-Type", "image/png"),
                    ("X-Robots-Tag", "noarchive"),
                    ("X-Robots-Tag", "GPTBot: noai"),
                ],
                b"\x89PNG fake",
                head,
            )
        if p.startswith("/page/"):
            return self._send(
                200,
                [("Content-Type", "text/html")],
                b'<html><head><meta name="robots" content="noimageai"></head></html>',
                head,
            )
        if p == "/big":
            return self._send(200, [("Content-Type", "text/html")], b"x" * 200_000, head)
        if p == "/redirect":
            return self._send(302, [("Location", "/page/after-redirect")], b"", head)
        if p == "/loop":
            return self._send(302, [("Location", "/loop")], b"", head)
        if p == "/slow":
            time.sleep(3)
            return self._send(200, [], b"late", head)
        if p == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(20):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.25)
            return None
        return self._send(404, [], b"not found", head)

    def do_GET(self):
        self._route(head=False)

    def do_HEAD(self):
        self._route(head=True)


class QuietServer(ThreadingHTTPServer):
    def handle_error(
        self, request, client_address
    ):  # a client that timed out is the point of a test
        pass


@pytest.fixture(scope="module")
def server():
    srv = QuietServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def fast(url: str, kind: str = "page", **kw):
    kw.setdefault("timeout", 2.0)
    return fetch(url, kind, limiter=HostLimiter(1000), allow_private=True, **kw)


def test_crawl_fills_the_cache_and_resumes(server, make_workspace, tmp_path):
    urls = [f"{server}/img/{i}.png" for i in range(3)] + [f"{server}/img/head405.png"]
    pages = [f"{server}/page/{i}" for i in range(4)]
    ws = make_workspace(
        [encode(synthetic_image(i)) for i in range(4)], urls=urls, extra={"page_url": pages}
    )
    Handler.log.clear()
    s = optouts.crawl(ws.root, tmp_path / "cache", rate=100, timeout=2, allow_private=True)
    assert s["targets"] == 3 + 4 + 4 and s["fetched"] == 11 and s["errors"] == {}
    assert {ua for _, _, _, ua in Handler.log} == {DEFAULT_AGENT}
    store = CrawlCache.open(tmp_path / "cache")
    img = store.get("image", urls[0])
    assert img.status == 200 and img.body is None
    # every header line is kept separately, in order
    assert [v for n, v in img.headers if n.lower() == "x-robots-tag"] == [
        "noarchive",
        "GPTBot: noai",
    ]
    assert store.host_file("robots", urls[0]).body == b"User-agent: GPTBot\nDisallow: /\n"
    assert store.host_file("tdmrep", urls[0]).status == 404
    assert b"noimageai" in store.get("page", pages[2]).body
    # HEAD refused -> GET with the body discarded
    assert store.get("image", urls[3]).status == 200 and ("GET", "/img/head405.png") in {
        (m, p) for _, m, p, _ in Handler.log
    }
    # a second run finds everything cached and fetches nothing
    again = optouts.crawl(ws.root, tmp_path / "cache", rate=100, allow_private=True)
    assert again["fetched"] == 0 and again["cached_before"] == 11
    # and the decisions read the cache: robots disallows GPTBot, ai.txt *.png, headers GPTBot: noai
    optouts.compute(ws.root, cache=tmp_path / "cache")
    con = ws.connect()
    got = dict(
        con.execute(
            "SELECT signal, count(DISTINCT row_id) FROM optout_signals WHERE state = 'reserved' "
            "AND use = 'genai_training' GROUP BY 1"
        ).fetchall()
    )
    assert got == {"robots.txt": 4, "ai.txt": 4, "x-robots-tag": 4, "html-meta-robots": 4}


def test_private_addresses_are_refused(server, make_workspace, tmp_path):
    ws = make_workspace([None], urls=[f"{server}/img/1.png"])
    Handler.log.clear()
    s = optouts.crawl(ws.root, tmp_path / "cache", rate=100)
    assert s["errors"] == {"refused": 4} and Handler.log == []
    store = CrawlCache.open(tmp_path / "cache")
    assert all(
        r.error.startswith("refused: loopback address 127.0.0.1") for r in store.responses.values()
    )
    # refused host files are unchecked, never "unreachable, disallow all"
    optouts.compute(ws.root, cache=tmp_path / "cache")
    states = dict(
        ws.connect()
        .execute(
            "SELECT signal, state FROM optout_signals WHERE use = 'data_mining' "
            "AND signal IN ('robots.txt', 'x-robots-tag')"
        )
        .fetchall()
    )
    assert states == {"robots.txt": "unchecked", "x-robots-tag": "unchecked"}


@pytest.mark.parametrize(
    "address, label",
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.7", "private"),
        ("169.254.169.254", "link-local"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_check_address_refuses(address, label):
    ip, why = check_address(address, 80, allow_private=False)
    assert ip is None and why.startswith(f"refused: {label} address")
    assert check_address(address, 80, allow_private=True)[1] is None


def test_check_address_allows_public():
    assert check_address("93.184.216.34", 80, allow_private=False) == ("93.184.216.34", None)


def test_rate_limit_per_host(server):
    limiter = HostLimiter(rate=10)
    t0 = time.monotonic()
    for _ in range(4):
        limiter.wait("a.example")
    same_host = time.monotonic() - t0
    t0 = time.monotonic()
    for host in ("b1", "b2", "b3", "b4"):
        limiter.wait(host)
    assert same_host >= 0.29 and time.monotonic() - t0 < 0.1
    # through the crawler's fetch: requests to one host are spaced by 1/rate
    Handler.log.clear()
    limiter = HostLimiter(rate=8)
    threads = [
        threading.Thread(
            target=fetch,
            args=(f"{server}/page/{i}", "page"),
            kwargs={"limiter": limiter, "allow_private": True},
        )
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    times = sorted(t for t, *_ in Handler.log)
    assert len(times) == 4 and min(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.1


def test_timeouts_size_cap_and_redirects(server):
    t0 = time.monotonic()
    r = fast(f"{server}/slow", timeout=0.5)
    assert r.error == "timeout" and r.status is None and time.monotonic() - t0 < 2.5
    t0 = time.monotonic()
    r = fast(f"{server}/drip", timeout=1.0)  # one byte every 0.25 s never trips the socket timeout
    assert r.error == "timeout" and time.monotonic() - t0 < 2.5
    r = fast(f"{server}/big", max_bytes=1000)
    assert r.status == 200 and len(r.body) == 1000 and r.body_truncated
    r = fast(f"{server}/redirect")
    assert (
        r.status == 200 and r.final_url.endswith("/page/after-redirect") and b"noimageai" in r.body
    )
    r = fast(f"{server}/loop")  # a loop: the 3xx is kept (robots.txt: unavailable, allow)
    assert r.status == 302 and r.error is None and r.redirects[-1].endswith("/loop")
    r = fast("ftp://example.com/x")
    assert "unsupported" in r.error


def test_warc_round_trip(server, make_workspace, tmp_path):
    ws = make_workspace(
        [None, None],
        urls=[f"{server}/img/a.png", f"{server}/img/b.png"],
        extra={"page_url": [f"{server}/page/a", None]},
    )
    optouts.crawl(ws.root, tmp_path / "cache", rate=100, allow_private=True)
    runner = CliRunner()
    res = runner.invoke(
        cli,
        ["optout", "export-warc", str(tmp_path / "cache"), "--out", str(tmp_path / "c.warc.gz")],
    )
    assert res.exit_code == 0 and "wrote 6 responses" in res.output, res.output
    res = runner.invoke(
        cli, ["optout", "import-warc", str(tmp_path / "c.warc.gz"), "--cache", str(tmp_path / "c2")]
    )
    assert res.exit_code == 0 and "imported 6 responses" in res.output, res.output
    a, b = CrawlCache.open(tmp_path / "cache"), CrawlCache.open(tmp_path / "c2")
    assert set(a.responses) == set(
        b.responses
    )  # same (kind, url): kinds recovered from path and type
    for key, r in a.responses.items():
        other = b.responses[key]
        assert (other.status, other.body or None) == (r.status, r.body or None)
        keep = [(n, v) for n, v in r.headers if n.lower() not in ("content-length",)]
        assert [(n, v) for n, v in other.headers if n.lower() not in ("content-length",)] == keep


def test_cli_crawl_refuses_loopback(server, make_workspace, tmp_path):
    ws = make_workspace([None], urls=[f"{server}/img/1.png"])
    res = CliRunner().invoke(
        cli, ["optout", "crawl", str(ws.root), "--cache", str(tmp_path / "c"), "--rate", "50"]
    )
    # a crawl that fetched nothing says so and exits non-zero
    assert res.exit_code == 1, res.output
    assert "fetched 4 of 4" in res.output and "refused 4" in res.output
    assert "every one of the 4 fetches failed" in res.output
