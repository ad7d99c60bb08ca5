"""The Spawning do-not-train client against a fake API on 127.0.0.1 started here.

The API shape (as the public clients use it): POST, `Content-Type: text/plain`, one URL per line,
`Authorization: API <key>`; answer `{"urls": [{"url": ..., "optOut": bool}, ...]}`. Promises
checked: batches of at most 10,000 URLs; answers joined by URL, never by position; no key, an HTTP
error or a body that is not that JSON leaves the URLs `unchecked` with a warning, never allowed.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest

from audit import optouts
from audit.optouts import spawning


class Api(BaseHTTPRequestHandler):
    mode = "ok"
    batches: list[int] = []
    auth: list[str] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        urls = [u for u in body.split("\n") if u]
        Api.batches.append(len(urls))
        Api.auth.append(self.headers.get("Authorization", ""))
        if Api.mode == "500":
            return self._send(500, b"oops")
        if Api.mode == "garbage":
            return self._send(200, b"<html>not json</html>")
        # reversed order, and an extra URL nobody asked about: a join by position would be wrong
        items = [{"url": u, "optOut": "/out/" in u} for u in reversed(urls)]
        items.append({"url": "https://stranger.example/z.jpg", "optOut": True})
        return self._send(200, json.dumps({"urls": items}).encode())

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def api():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/api/v2/query/urls"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def reset():
    Api.mode, Api.batches, Api.auth = "ok", [], []


def test_batches_and_join_by_url(api):
    urls = [f"https://a.example/{'out' if i % 7 == 0 else 'in'}/{i}.jpg" for i in range(25_000)]
    r = spawning.check(urls, endpoint=api, key="k")
    assert Api.batches == [10_000, 10_000, 5_000] and Api.auth[0] == "API k"
    assert all(r.answer(u) == ("/out/" in u) for u in urls)
    assert r.answer("https://stranger.example/z.jpg") is None  # not asked: not trusted
    # normalised join: another spelling of the same URL finds its answer
    assert r.answer("HTTPS://A.EXAMPLE:443/out/0.jpg") is True


def test_no_key_http_error_and_bad_json_are_unchecked(api, monkeypatch):
    monkeypatch.delenv(spawning.KEY_ENV, raising=False)
    r = spawning.check(["https://a.example/1.jpg"], endpoint=api)
    assert r.answer("https://a.example/1.jpg") is None and "no API key" in r.warnings[0]
    assert Api.batches == []  # nothing sent without a key
    Api.mode = "500"
    r = spawning.check(
        ["https://a.example/1.jpg", "https://a.example/2.jpg"], endpoint=api, key="k"
    )
    assert r.answer("https://a.example/1.jpg") is None and "HTTP 500" in r.why_unchecked(
        "https://a.example/1.jpg"
    )
    Api.mode = "garbage"
    r = spawning.check(["https://a.example/1.jpg"], endpoint=api, key="k")
    assert r.answer("https://a.example/1.jpg") is None and "not JSON" in r.warnings[0]
    r = spawning.check(["https://a.example/1.jpg"], endpoint="http://127.0.0.1:9/none", key="k")
    assert r.answer("https://a.example/1.jpg") is None and "request failed" in r.warnings[0]


def test_stage_with_spawning(api, make_workspace, monkeypatch):
    urls = ["https://a.example/out/1.jpg", "https://a.example/in/2.jpg"]
    ws = make_workspace([None, None], urls=urls)
    monkeypatch.setenv(spawning.KEY_ENV, "k")
    s = optouts.compute(ws.root, spawning=True, spawning_endpoint=api)
    assert s["decisions"]["genai_training"] == {"reserved": 1, "allowed": 1}
    assert s["spawning"]["opted_out"] == 1 and s["coverage"]["spawning"] == {"evaluated": 2}
    monkeypatch.delenv(spawning.KEY_ENV)
    s = optouts.compute(ws.root, spawning=True, spawning_endpoint=api + "?again")
    assert s["decisions"]["genai_training"] == {"unchecked": 2}  # never allowed without an answer
    cov = pq.read_table(ws.path("optout/coverage.parquet")).column("spawning").to_pylist()
    assert cov == ["missing", "missing"]


def test_cli_warns_without_a_key(make_workspace, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from audit.cli import cli

    monkeypatch.delenv(spawning.KEY_ENV, raising=False)
    ws = make_workspace([None], urls=["https://a.example/in/1.jpg"])
    res = CliRunner().invoke(
        cli, ["optout", str(ws.root), "--spawning", "--report-dir", str(tmp_path / "r")]
    )
    assert res.exit_code == 0 and "warning: Spawning API: no API key" in res.output
    assert "unchecked 1" in res.output
