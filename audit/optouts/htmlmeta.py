"""Opt-out signals in an HTML page's `<meta>` tags.

* `<meta name="robots" content="noai, noimageai">` applies to every agent; a meta named after an agent
  (`<meta name="CCBot" content="noai">`) applies only to that agent; names are case-insensitive. The
  directives are the X-Robots-Tag ones (see `headers`), including `index_policy`;
* `<meta name="tdm-reservation" content="1">` (W3C TDMRep) reserves data_mining, with
  `<meta name="tdm-policy">` as evidence; `0` allows; another value is unset (no signal). The
  TDMRep HTML technique scopes these metas to the HTML document itself, so the consent stage
  (`decide`) does not apply them to the images a page shows.

The page is decoded as UTF-8, falling back to Windows-1252 (the WHATWG default for legacy pages);
the directives are ASCII so either decoding finds them. Only the first `max_bytes` are parsed, with
a small linear-time tokenizer (comments, raw-text elements such as
`<script>`, quoted attribute values containing ">"): the stdlib `html.parser` goes quadratic on
hostile markup such as `<a<a<a...`.

>>> page = b'<html><head><meta name="ROBOTS" content="noimageai"><meta name="tdm-reservation" content="1"></head></html>'
>>> [(s.signal, s.state) for s in signals(page)]
[('html-meta-robots', 'reserved'), ('tdm-meta', 'reserved')]
"""

from __future__ import annotations

import html as html_lib
from collections.abc import Sequence

from audit.optouts import headers
from audit.optouts.signals import DEFAULT_AGENTS, USES, Signal, expand_uses, product_token

MAX_BYTES = 1024 * 1024
_MAX_METAS = 500


_SPACE = " \t\n\r\f"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_RAW_TEXT = (
    "script",
    "style",
    "textarea",
    "title",
    "xmp",
    "iframe",
    "noembed",
    "noframes",
    "plaintext",
)


def _tag_attrs(text: str, i: int) -> tuple[dict[str, str], int]:
    """Attributes of the tag whose name ended at `i`, and the index after its ">" (HTML tokenizer rules:
    quoted values may contain ">"; an unterminated quote runs to the end of the document)."""
    n, attrs = len(text), dict[str, str]()
    while i < n:
        while i < n and (text[i] in _SPACE or text[i] == "/"):
            i += 1
        if i >= n or text[i] == ">":
            return attrs, i + 1
        start = i
        i += 1  # a name may start with "="
        while i < n and text[i] not in _SPACE and text[i] not in "/>=":
            i += 1
        name = text[start:i].lower()
        while i < n and text[i] in _SPACE:
            i += 1
        value = ""
        if i < n and text[i] == "=":
            i += 1
            while i < n and text[i] in _SPACE:
                i += 1
            if i < n and text[i] in "\"'":
                end = text.find(text[i], i + 1)
                if end < 0:
                    return attrs, n
                value, i = text[i + 1 : end], end + 1
            else:
                start = i
                while i < n and text[i] not in _SPACE and text[i] != ">":
                    i += 1
                value = text[start:i]
        attrs.setdefault(name, html_lib.unescape(value))
    return attrs, n


def _scan(text: str) -> list[tuple[str, str, int]]:
    """(name, content, line) of named metas, in linear time: html.parser goes quadratic on "<a<a<a...",
    so this is a small tokenizer that knows comments, raw-text elements and quoted attribute values."""
    lower = text.translate(
        _ASCII_LOWER
    )  # str.lower() can change the length ("İ"), breaking indices
    out: list[tuple[str, str, int]] = []
    n, i, line, counted = len(text), 0, 1, 0
    while len(out) < _MAX_METAS:
        i = text.find("<", i)
        if i < 0 or i + 1 >= n:
            break
        nxt = text[i + 1]
        if lower.startswith("<!--", i):
            end = lower.find("-->", i + 4)
            i = n if end < 0 else end + 3
        elif nxt in "!?/":  # doctype, bogus comment, end tag: up to the next ">"
            end = text.find(">", i + 2)
            i = n if end < 0 else end + 1
        elif nxt.isascii() and nxt.isalpha():
            j = i + 1
            while j < n and text[j] not in _SPACE and text[j] not in "/>":
                j += 1
            tag = lower[i + 1 : j]
            attrs, end = _tag_attrs(text, j)
            if tag == "meta" and attrs.get("name", "").strip():
                line += text.count("\n", counted, i)
                counted = i
                out.append((attrs["name"].strip(), attrs.get("content", ""), line))
            if tag in _RAW_TEXT:
                close = lower.find("</" + tag, end)
                end = n if close < 0 else close
            i = max(end, i + 1)
        else:
            i += 1  # "<" not starting a tag is text
    return out


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
    return _scan(_decode(bytes(html or b"")[:max_bytes]).replace("\x00", "\ufffd"))


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
            directives = [d for _, d in headers.robots_directives(content)]
            uses = headers.reserved_uses(directives, index_policy)
            if uses:
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
        # any other value is treated as unset (TDMRep): no signal
    if not any(s.signal == "html-meta-robots" for s in out):
        note = "no robots or agent meta reserves AI training"
        out.insert(0, Signal("html-meta-robots", "allowed", USES, location, note))
    return out
