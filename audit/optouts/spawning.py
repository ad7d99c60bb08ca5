"""An optional client of Spawning's do-not-train API (the opt-outs registered at haveibeentrained.com).

The API takes a POST of image URLs, one per line (`Content-Type: text/plain`), with the header
`Authorization: API <key>`, and answers JSON `{"urls": [{"url": ..., "optOut": true|false}, ...]}`.
The key comes from the environment (`SPAWNING_OPTS_KEY`, the name datadiligence uses) and is never
written anywhere; the endpoint is a parameter (`DEFAULT_ENDPOINT` unless told otherwise), so tests
and mirrors can point it elsewhere.

What this client promises:
- at most `MAX_BATCH` (10,000) URLs per request;
- answers are joined to the rows by URL (normalised on both sides), never by position: a response
  that reorders, drops or adds URLs cannot shift an opt-out onto another row;
- no key, an HTTP error, a network error, a body that is not the JSON above, or a URL the answer
  does not mention: those URLs are `unchecked` with a warning saying why, never `allowed`.

>>> check(["https://a.example/x.jpg"], key="")  # doctest: +SKIP
Result(endpoint=..., opted_out={}, problems={'https://a.example/x.jpg': 'no API key: ...'}, ...)
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field

from audit.optouts import urls as urlnorm

DEFAULT_ENDPOINT = "https://opts-api.spawningaiapi.com/api/v2/query/urls"
KEY_ENV = "SPAWNING_OPTS_KEY"
MAX_BATCH = 10_000
MAX_RESPONSE = 64 * 1024 * 1024


@dataclass
class Result:
    """Answers by normalised URL, and why the others could not be checked."""

    endpoint: str
    opted_out: dict[str, bool] = field(default_factory=dict)  # normalised URL -> optOut
    problems: dict[str, str] = field(default_factory=dict)  # normalised URL -> why unchecked
    warnings: list[str] = field(default_factory=list)
    requests: int = 0

    def answer(self, url: str) -> bool | None:
        """True (opted out), False (not opted out) or None (not checked)."""
        return self.opted_out.get(urlnorm.normalise(url) or url)

    def why_unchecked(self, url: str | None) -> str:
        if not url:
            return "Spawning API: row has no URL"
        key = urlnorm.normalise(url) or url
        return "Spawning API: " + self.problems.get(key, "no answer for this URL")

    def summary(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "requests": self.requests,
            "answered": len(self.opted_out),
            "opted_out": sum(self.opted_out.values()),
            "unchecked": len(self.problems),
            "warnings": self.warnings[:20],
        }


def check(
    urls: Sequence[str],
    endpoint: str = DEFAULT_ENDPOINT,
    key: str | None = None,
    batch: int = MAX_BATCH,
    timeout: float = 60.0,
) -> Result:
    """Ask the API about `urls` (duplicates asked once); never raises for an API problem."""
    result = Result(endpoint)
    key = os.environ.get(KEY_ENV, "") if key is None else key
    wanted: dict[str, str] = {}  # normalised -> as sent
    for u in urls:
        norm = urlnorm.normalise(u) if u else None
        if norm and norm not in wanted:
            wanted[norm] = u
    if not key:
        why = f"no API key: set {KEY_ENV} to check the Spawning do-not-train registry"
        result.warnings.append(why)
        result.problems = dict.fromkeys(wanted, why)
        return result
    batch = max(1, min(batch, MAX_BATCH))
    items = list(wanted.items())
    for start in range(0, len(items), batch):
        chunk = dict(items[start : start + batch])
        result.requests += 1
        answers, problem = _ask(list(chunk.values()), endpoint, key, timeout)
        if problem:
            result.warnings.append(f"request {result.requests}: {problem}")
        for norm in chunk:
            if norm in answers:
                result.opted_out[norm] = answers[norm]
            else:
                result.problems[norm] = problem or "the answer did not mention this URL"
    return result


def _ask(batch: list[str], endpoint: str, key: str, timeout: float) -> tuple[dict[str, bool], str]:
    """({normalised URL: optOut}, problem) for one request; problem is "" on success."""
    # The API refuses a single-URL body; an empty second line is ignored by the join below.
    body = "\n".join(batch if len(batch) > 1 else [*batch, ""]).encode("utf-8")
    req = urllib.request.Request(
        endpoint,
        data=body,
        method="POST",
        headers={
            "Content-Type": "text/plain",
            "Authorization": f"API {key}",
            "User-Agent": "audit-dataset-auditor/0.1",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - endpoint is http(s) by contract
            raw = resp.read(MAX_RESPONSE + 1)
    except urllib.error.HTTPError as e:
        return {}, f"HTTP {e.code} from {endpoint}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return {}, f"request failed: {type(e).__name__}: {e}"
    if len(raw) > MAX_RESPONSE:
        return {}, f"answer larger than {MAX_RESPONSE} bytes"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return {}, f"answer is not JSON: {str(e)[:100]}"
    items = data.get("urls") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return {}, "answer has no 'urls' list"
    out: dict[str, bool] = {}
    bad = 0
    for item in items:
        url = item.get("url") if isinstance(item, dict) else None
        flag = item.get("optOut") if isinstance(item, dict) else None
        norm = urlnorm.normalise(url) if isinstance(url, str) and url else None
        if norm is None or not isinstance(flag, bool):
            bad += 1
            continue
        # The same URL answered twice with different flags: the opt-out wins.
        out[norm] = out.get(norm, False) or flag
    return out, (f"{bad} malformed answer item(s) ignored" if bad else "")
