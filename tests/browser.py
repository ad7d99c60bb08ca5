"""A small Chrome DevTools Protocol client for checking report pages in headless Chromium.

Debian's `chromium` is driven directly over its DevTools websocket (aiohttp's client), so
nothing downloads a browser of its own (as `playwright install` would). For each page:
load it from disk, collect console errors and uncaught exceptions, list images that did not
load, links whose target file (or `#anchor`) does not exist, and elements that stick out
past the right edge of the page, then save a full-page screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # needed when running as root (CI containers)
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--allow-file-access-from-files",
    "--remote-debugging-port=0",
)

# Runs in the page once it has loaded; returns what the checks need as JSON.
_PROBE = r"""
(() => {
  const width = document.documentElement.clientWidth;
  const wide = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > width + 1) {
      wide.push(el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + ' right=' + Math.round(r.right));
    }
  }
  const broken = [...document.images]
    .filter(img => !img.complete || img.naturalWidth === 0)
    .map(img => (img.getAttribute('src') || '').slice(0, 80));
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
  return JSON.stringify({width, scrollWidth: document.documentElement.scrollWidth,
                         height: document.documentElement.scrollHeight, wide: wide.slice(0, 20),
                         broken, links, ids, images: document.images.length});
})()
"""


@dataclass
class PageCheck:
    """What one page looked like in the browser."""

    path: Path
    console_errors: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    failing_links: list[str] = field(default_factory=list)
    too_wide: list[str] = field(default_factory=list)
    images: int = 0
    links: list[str] = field(default_factory=list)
    screenshot: Path | None = None

    @property
    def problems(self) -> list[str]:
        return (
            [f"console: {e}" for e in self.console_errors]
            + [f"broken image: {e}" for e in self.broken_images]
            + [f"failing link: {e}" for e in self.failing_links]
            + [f"too wide: {e}" for e in self.too_wide]
        )


def available() -> bool:
    return shutil.which(CHROMIUM) is not None


class Browser:
    """One headless Chromium for a series of pages; use as a context manager."""

    def __init__(self, width: int = 1280, height: int = 900, binary: str = CHROMIUM):
        self.width, self.height, self.binary = width, height, binary

    def __enter__(self) -> Browser:
        self._profile = tempfile.mkdtemp(prefix="audit-chromium-")
        self._proc = subprocess.Popen(
            [
                self.binary,
                *FLAGS,
                f"--user-data-dir={self._profile}",
                f"--window-size={self.width},{self.height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stderr is not None
        for line in self._proc.stderr:  # Chromium prints the endpoint once it listens
            m = re.search(r"DevTools listening on ws://([^/]+)/", line)
            if m:
                self._host = m.group(1)
                break
        else:
            raise RuntimeError(f"{self.binary} exited before opening its DevTools port")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        shutil.rmtree(self._profile, ignore_errors=True)

    def _page_socket(self) -> str:
        with urllib.request.urlopen(f"http://{self._host}/json/list", timeout=10) as r:
            targets = json.load(r)
        return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

    def check(self, page: Path, screenshot: Path | None = None) -> PageCheck:
        return asyncio.run(self._check(Path(page).resolve(), screenshot))

    async def _check(self, page: Path, screenshot: Path | None) -> PageCheck:
        import aiohttp

        result = PageCheck(page)
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self._page_socket(), max_msg_size=0) as ws:
                ids = iter(range(1, 1_000_000))
                loaded = asyncio.Event()
                waiting: dict[int, asyncio.Future[Any]] = {}

                async def reader() -> None:
                    async for msg in ws:
                        data = json.loads(msg.data)
                        if "id" in data and data["id"] in waiting:
                            waiting.pop(data["id"]).set_result(data)
                        method, params = data.get("method"), data.get("params", {})
                        if method == "Page.loadEventFired":
                            loaded.set()
                        elif method == "Runtime.consoleAPICalled" and params["type"] in (
                            "error",
                            "assert",
                        ):
                            result.console_errors.append(
                                " ".join(
                                    str(a.get("value", a.get("description")))
                                    for a in params["args"]
                                )
                            )
                        elif method == "Runtime.exceptionThrown":
                            result.console_errors.append(
                                params["exceptionDetails"].get("text", "exception")
                            )
                        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                            result.console_errors.append(params["entry"]["text"])

                async def send(method: str, **params: Any) -> dict[str, Any]:
                    key = next(ids)
                    waiting[key] = asyncio.get_running_loop().create_future()
                    await ws.send_str(json.dumps({"id": key, "method": method, "params": params}))
                    reply = await asyncio.wait_for(waiting[key], 60)
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})

                task = asyncio.create_task(reader())
                for domain in ("Page", "Runtime", "Log"):
                    await send(f"{domain}.enable")
                await send(
                    "Emulation.setDeviceMetricsOverride",
                    width=self.width,
                    height=self.height,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                await send("Page.navigate", url=page.as_uri())
                await asyncio.wait_for(loaded.wait(), 60)
                await asyncio.sleep(0.2)  # let late console messages arrive
                probe = json.loads(
                    (await send("Runtime.evaluate", expression=_PROBE, returnByValue=True))[
                        "result"
                    ]["value"]
                )
                result.broken_images = probe["broken"]
                result.too_wide = probe["wide"] + (
                    [f"document scrollWidth {probe['scrollWidth']} > {probe['width']}"]
                    if probe["scrollWidth"] > probe["width"]
                    else []
                )
                result.images = probe["images"]
                result.links = probe["links"]
                result.failing_links = [
                    link for link in probe["links"] if not _link_ok(link, page, set(probe["ids"]))
                ]
                if screenshot is not None:
                    height = min(int(probe["height"]), 12000)
                    shot = await send(
                        "Page.captureScreenshot",
                        format="png",
                        captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1},
                    )
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    screenshot.write_bytes(base64.b64decode(shot["data"]))
                    result.screenshot = screenshot
                task.cancel()
        return result


def _link_ok(link: str, page: Path, ids: set[str]) -> bool:
    """A file link must name an existing file (and an existing id, for `#anchor` on this page)."""
    url = urlparse(link)
    if url.scheme in ("http", "https", "mailto"):
        return True  # not fetched: tests run offline; the pages' own links are all local
    if url.scheme != "file":
        return False
    target = Path(unquote(url.path))
    if not target.exists():
        return False
    if url.fragment and target == page:
        return url.fragment in ids
    if url.fragment and target.suffix == ".html":
        return f'id="{url.fragment}"' in target.read_text("utf-8")
    return True
