"""W3C TDMRep: the site-wide `/.well-known/tdmrep.json` file, and how it combines with headers and metas.

The file is a JSON array of `{"location": pattern, "tdm-reservation": 0|1, "tdm-policy": url}`.
A location is matched against the URL path the way robots.txt matches its paths (RFC 9309 2.2.2): a
prefix match, where `*` stands for any run of characters and a final `$` anchors the end; so "/"
covers the whole site and "/dir/" every file under it. Percent-encoding is normalised on both sides.
The FIRST matching entry in array order decides. `tdm-reservation: 1` reserves data_mining (hence
every AI use); `0` allows.

Entries that are not objects, lack a location, or carry a reservation other than 0/1 are treated as
unset: skipped (matching goes on to the next entry) and counted. A file that cannot be read as a JSON
array (not JSON, truncated, an object) means the site does not implement the protocol: no
reservation ("allowed", with the reason as evidence), not "unchecked". A missing file (3xx/4xx)
allows; 5xx or a network error is unchecked; `None` (not fetched) is unchecked.

Resource-level declarations override the site file (TDMRep: the HTTP header and the HTML meta are
more specific than tdmrep.json): `combine` drops the file's signal when a `tdm-header` or `tdm-meta`
signal decided (reserved or allowed) for the same resource.

>>> f = parse(b'[{"location": "/images/*", "tdm-reservation": 1, "tdm-policy": "https://ex.com/p.json"}]')
>>> [(s.state, s.uses[-1]) for s in f.signals("https://ex.com/images/a.jpg")]
[('reserved', 'data_mining')]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from audit.optouts import robots, urls
from audit.optouts.signals import USES, Signal, expand_uses

MAX_BYTES = 1024 * 1024
_RESOURCE_LEVEL = ("tdm-header", "tdm-meta")


@dataclass(frozen=True)
class Entry:
    index: int  # position in the array, 0-based
    location: str
    reservation: int
    policy: str | None
    rule: robots.Rule  # the location compiled as a robots.txt path pattern


def _reservation(value: object) -> int | None:
    # TDMRep: "`tdm-reservation` is an integer" and "Other values are considered protocol
    # errors": a JSON string "1" or `true` is unset, like 2.
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return value
    return None


class TdmRepFile:
    """A parsed tdmrep.json, or a stand-in for one that is missing (allow) or unreadable (unchecked)."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.skipped = 0
        self.mode = "parsed"  # or "absent", "unchecked"
        self.note = ""

    def match(self, url: str) -> Entry | None:
        """The first entry whose location matches the path of `url` (or a bare path)."""
        path = url if url.startswith("/") else urls.path_and_query(url)
        if path is None:
            return None
        path = path.split("?", 1)[0]  # "a pattern matching the path": the query is not part of it
        return next((e for e in self.entries if robots.pattern_matches(e.rule, path)), None)

    def signals(self, url: str, location: str | None = None) -> list[Signal]:
        """The tdmrep.json signal for the resource at `url`."""
        if urls.path_and_query(url) is None:
            return [
                Signal("tdmrep.json", "not_evaluable", USES, "image URL", f"malformed URL: {url!r}")
            ]
        where = location or f"{urls.origin(url)}/.well-known/tdmrep.json"
        if self.mode == "unchecked":
            return [Signal("tdmrep.json", "unchecked", USES, where, self.note)]
        if self.mode == "absent":
            return [Signal("tdmrep.json", "allowed", USES, where, self.note)]
        entry = self.match(url)
        if entry is None:
            path = urls.path_and_query(url)
            note = f"no location matches {path}" + (
                f" ({self.skipped} invalid entries skipped)" if self.skipped else ""
            )
            return [Signal("tdmrep.json", "allowed", USES, where, note)]
        text = f'entry {entry.index}: {{"location": "{entry.location}", "tdm-reservation": {entry.reservation}'
        text += f', "tdm-policy": "{entry.policy}"}}' if entry.policy else "}"
        if entry.reservation == 1:
            return [Signal("tdmrep.json", "reserved", expand_uses(["data_mining"]), where, text)]
        return [Signal("tdmrep.json", "allowed", USES, where, text)]


def parse(body: bytes, max_bytes: int = MAX_BYTES) -> TdmRepFile:
    """Parse a tdmrep.json body; never raises (an unreadable file gives an "unchecked" stand-in)."""
    f = TdmRepFile()
    body = bytes(body or b"")
    if len(body) > max_bytes:
        f.mode, f.note = (
            "unchecked",
            f"tdmrep.json larger than {max_bytes} bytes ({len(body)}); not parsed",
        )
        return f
    try:
        data = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        f.mode, f.note = (
            "absent",
            f"tdmrep.json is not valid JSON ({str(e)[:100]}): TDMRep not implemented",
        )
        return f
    if not isinstance(data, list):
        what = type(data).__name__
        f.mode, f.note = (
            "absent",
            f"tdmrep.json is a JSON {what}, not an array: TDMRep not implemented",
        )
        return f
    for index, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("location"), str):
            f.skipped += 1
            continue
        reservation = _reservation(item.get("tdm-reservation"))
        if reservation is None:
            f.skipped += 1
            continue
        loc = item["location"].strip()
        if "://" in loc:  # an absolute URL: its path is the pattern
            loc = loc.split("://", 1)[1]
            loc = loc[loc.find("/") :] if "/" in loc else "/"
        if not loc.startswith(("/", "*")):
            loc = "/" + loc
        policy = item.get("tdm-policy")
        policy = policy if isinstance(policy, str) and policy.strip() else None
        rule = robots.compile_pattern(loc)
        if rule is None:
            f.skipped += 1
            continue
        f.entries.append(Entry(index, loc, reservation, policy, rule))
    return f


def from_status(status: int | None, body: bytes = b"") -> TdmRepFile:
    """The TdmRepFile a fetch result stands for: 2xx parse, 3xx/4xx absent, else unchecked."""
    if status is not None and 200 <= status < 300:
        return parse(body)
    f = TdmRepFile()
    if status is None:
        f.mode, f.note = "unchecked", "tdmrep.json not fetched"
    elif 300 <= status < 500 and status != 429:
        f.mode, f.note = "absent", f"no tdmrep.json (HTTP {status})"
    else:
        f.mode, f.note = (
            "unchecked",
            f"tdmrep.json unreachable ({f'HTTP {status}' if status > 0 else 'network error'})",
        )
    return f


def combine(
    file_signals: Sequence[Signal],
    header_signals: Sequence[Signal],
    meta_signals: Sequence[Signal] = (),
) -> list[Signal]:
    """Header and meta override the file: the tdmrep.json signals are dropped when a `tdm-header` or
    `tdm-meta` signal decided (reserved or allowed); both resource-level signals are kept (the decision
    takes the most restrictive). Other signals pass through unchanged.

    >>> file = [Signal("tdmrep.json", "reserved", expand_uses(["data_mining"]), "f", "entry 0")]
    >>> head = [Signal("tdm-header", "allowed", USES, "h", "tdm-reservation: 0")]
    >>> [s.signal for s in combine(file, head)]
    ['tdm-header']
    """
    resource = [*header_signals, *meta_signals]
    decided = any(
        s.signal in _RESOURCE_LEVEL and s.state in ("reserved", "allowed") for s in resource
    )
    kept = [s for s in file_signals if not (decided and s.signal == "tdmrep.json")]
    return [*kept, *resource]
