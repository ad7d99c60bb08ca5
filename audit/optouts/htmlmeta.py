"""Opt-out signals in an HTML page's `<meta>` tags.

* `<meta name="robots" content="noai, noimageai">` applies to every agent; a meta named after an agent
  (`<meta name="CCBot" content="noai">`) applies only to that agent; names are case-insensitive. The
  directives are the X-Robots-Tag ones (see `headers`), including `index_policy`;
* `<meta name="tdm-reservation" content="1">` (W3C TDMRep) reserves data_mining, with
  `<meta name="tdm-policy">` as evidence; `0` allows.

The page is decoded as UTF-8, falling back to Windows-1252 (the WHATWG default for legacy pages);
the directives are ASCII so either decoding finds them. Only the first `max_bytes` are parsed, with
the stdlib `html.parser`, which never raises on broken markup.

>>> page = b'<html><head><meta name="ROBOTS" content="noimageai"><meta name="tdm-reservation" content="1"></head></html>'
>>> [(s.signal, s.state) for s in signals(page)]
[('html-meta-robots', 'reserved'), ('tdm-meta', 'reserved')]
"""

from __future__ import annotations

from collections.abc import Sequence
from html.parser import HTMLParser

from audit.optouts import headers
from audit.optouts.signals import DEFAULT_AGENTS, USES, Signal, expand_uses, product_token

MAX_BYTES = 1024 * 1024
_MAX_METAS = 500


class _MetaCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.metas: list[tuple[str, str, int]] = []  # (name, content, line)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "meta" or len(self.metas) >= _MAX_METAS:
            return
        values = {k.lower(): (v or "") for k, v in attrs}
        name = values.get("name", "").strip()
        if name:
            self.metas.append((name, values.get("content", ""), self.getpos()[0]))

    handle_startendtag = handle_starttag


def _decode(html: bytes) -> str:
    if html[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a UTF-16 page would otherwise hide every meta
        return html.decode("utf-16", "replace")
    try:
        return html.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start >= len(html) - 3:  # only the size cap cut a character in two
            return html[: e.start].decode("utf-8", "replace")
        return html.decode("cp1252", "replace")


def metas(html: bytes, max_bytes: int = MAX_BYTES) -> list[tuple[str, str, int]]:
    """(name, content, line) of every named `<meta>` in the first `max_bytes` of `html`."""
    collector = _MetaCollector()
    collector.feed(_decode(bytes(html or b"")[:max_bytes]).replace("\x00", "\ufffd"))
    collector.close()
    return collector.metas


def signals(
    html: bytes,
    agent_names: Sequence[str] = DEFAULT_AGENTS,
    index_policy: bool = False,
    location: str = "HTML page",
    max_bytes: int = MAX_BYTES,
) -> list[Signal]:
    """Signals of a page's meta tags; an "allowed" html-meta-robots signal when nothing reserves."""
    out: list[Signal] = []
    tdm: list[tuple[str, int]] = []
    policies: list[str] = []
    tokens = {product_token(a): a for a in agent_names}
    for name, content, line in metas(html, max_bytes):
        lname = name.lower()
        where = f"{location} line {line}"
        text = f'<meta name="{name}" content="{content}">'
        if lname == "robots":
            out += headers.x_robots_signals(
                content, agent_names, where, index_policy, "html-meta-robots", text
            )
        elif product_token(name) in tokens and product_token(name) == lname:
            # A meta named after one bot speaks to that bot only; no "bot:" prefix inside it.
            agent = tokens[lname]
            found = headers.reserving(
                (d for _, d in headers.robots_directives(content)), index_policy
            )
            if found:
                uses = expand_uses(["ai_training"])
                out.append(Signal("html-meta-robots", "reserved", uses, where, text, agent=agent))
        elif lname == "tdm-reservation":
            tdm.append((content.strip(), line))
        elif lname == "tdm-policy":
            policies.append(content.strip())
    policy = f'; <meta name="tdm-policy" content="{policies[0]}">' if policies else ""
    for value, line in tdm:
        where, text = f"{location} line {line}", f'<meta name="tdm-reservation" content="{value}">'
        if value == "1":
            out.append(
                Signal("tdm-meta", "reserved", expand_uses(["data_mining"]), where, text + policy)
            )
        elif value == "0":
            out.append(Signal("tdm-meta", "allowed", USES, where, text))
        else:
            out.append(Signal("tdm-meta", "not_evaluable", USES, where, text + " (not 0 or 1)"))
    if not any(s.signal == "html-meta-robots" for s in out):
        note = "no robots or agent meta reserves AI training"
        out.insert(0, Signal("html-meta-robots", "allowed", USES, location, note))
    return out
