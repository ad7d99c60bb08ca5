"""Opt-out signals in HTTP response headers: X-Robots-Tag, TDMRep, Content-Usage, Content-Signal.

Done the way the specifications say, where common tools differ:

* every header line is read (not just the first), each on its own; header names and directive names
  are case-insensitive;
* X-Robots-Tag `botname: directives` applies only to that bot; the scope lasts until the next
  `otherbot:` item, so a proxy's merge of two lines into one comma list reads the same; an unscoped
  directive applies to every agent. A scope is a token followed by ":" that is not a directive taking
  a value (`unavailable_after: ...`, `max-snippet: ...`);
* `noai`, `noimageai` (our rows are images) and `noml` reserve ai_training (hence genai_training).
  `noindex`, `noimageindex` and `none` reserve the informational use search_indexing; with
  `index_policy=True` they also reserve ai_training: off by default, because "do not list me in
  search" is not "do not train on me";
* `tdm-reservation: 1` (W3C TDMRep) reserves data_mining, with `tdm-policy` as evidence; `0` allows; any
  other value is treated as unset: no signal;
* `Content-Usage` (IETF aipref attach + vocab drafts) is an RFC 9651 Dictionary, parsed with `http_sf`:
  a field that fails to parse states no preference at all; keys and tokens are case-sensitive; only
  the tokens `y` and `n` count (the string `"n"` is not the token `n`); a repeated key keeps its last
  value; unknown labels and all parameters are ignored. Categories: `all` (automated processing;
  the older `tdm`) -> data_mining, `train-ai` (older `ai`) -> ai_training, `train-genai` (older
  `genai`) -> genai_training, `search` -> search_indexing, `ai-use` -> ai_inference. As in the
  vocabulary drafts with category subsets, a use without its own preference takes its parent's
  (train-genai < train-ai < all; search, ai-use < all), so `all=n, train-ai=y` reserves data_mining
  but allows AI training. The latest draft narrows `train-ai` to generative models; `train-ai=n`
  reserves both our training uses, so either reading gives the same reservation;
* `Content-Signal` (Cloudflare): `ai-train=no` reserves ai_training, `search=no` search_indexing,
  `ai-input=no` ai_inference; `yes` allows.
Unknown directives and keys are ignored without error.

>>> [(s.signal, s.state, s.agent) for s in signals([("x-robots-tag", "otherbot: noai"), ("X-Robots-Tag", "GPTBot: noimageai")])]
[('x-robots-tag', 'reserved', 'GPTBot')]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from audit.optouts.signals import DEFAULT_AGENTS, USES, Signal, expand_uses, product_token

# Directives that take a value after ":"; anything else before a ":" is a user-agent scope.
_VALUE_DIRECTIVES = {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
# "disallowaitraining" is the robots meta / X-Robots-Tag form of draft-canel-robots-ai-control.
AI_DIRECTIVES = frozenset({"noai", "noimageai", "noml", "disallowaitraining"})
INDEX_DIRECTIVES = frozenset({"noindex", "noimageindex", "none"})
# Content-Usage category -> (our use, parent categories to fall back to, most specific first).
_USAGE: dict[str, tuple[str, tuple[str, ...]]] = {
    "train-genai": (
        "genai_training",
        ("train-genai", "genai", "train-ai", "ai", "all", "tdm"),
    ),
    "train-ai": ("ai_training", ("train-ai", "ai", "all", "tdm")),
    "all": ("data_mining", ("all", "tdm")),
    "search": ("search_indexing", ("search", "all", "tdm")),
    "ai-use": ("ai_inference", ("ai-use", "all", "tdm")),
}
_SIGNAL_KEYS = {"ai-train": "ai_training", "search": "search_indexing", "ai-input": "ai_inference"}
_MAX_LINES = 200  # a response with more header lines than this is hostile; the rest are ignored


def _is_token(text: str) -> bool:
    return bool(text) and all(c.isalnum() or c in "-_" for c in text) and text.isascii()


def robots_directives(value: str) -> list[tuple[str, str]]:
    """(scope, directive) pairs of one X-Robots-Tag value or robots meta content; scope "*" if unscoped.

    >>> robots_directives("googlebot: noindex, otherbot: noai, NOIMAGEAI")
    [('googlebot', 'noindex'), ('otherbot', 'noai'), ('otherbot', 'noimageai')]
    """
    out: list[tuple[str, str]] = []
    scope = "*"
    for item in value.split(","):
        item = item.strip()
        if ":" in item:
            head, rest = item.split(":", 1)
            if _is_token(head.strip()) and head.strip().lower() not in _VALUE_DIRECTIVES:
                scope, item = head.strip(), rest.strip()
        name = item.split(":", 1)[0].strip().lower()
        # "max-image-preview: none": here "none" is a value, not the "none" directive
        if ":" in item and name in _VALUE_DIRECTIVES:
            out.append((scope, name))
            continue
        # "noai noimageai" (space-separated) is a common mistake we honour
        for word in item.split():
            directive = word.split(":", 1)[0].strip().lower()
            if directive:
                out.append((scope, directive))
    return out


def _scope_agent(scope: str, agent_names: Sequence[str]) -> str | None:
    """The agent name a scoped rule applies to, "*" for unscoped, None when it is another bot's rule."""
    if scope == "*":
        return "*"
    token = product_token(scope)
    for name in agent_names:
        if product_token(name) == token:
            return name
    return None


def reserving(directives: Iterable[str], index_policy: bool = False) -> list[str]:
    """The directives among `directives` that reserve AI training."""
    counted = AI_DIRECTIVES | INDEX_DIRECTIVES if index_policy else AI_DIRECTIVES
    return [d for d in directives if d in counted]


def reserved_uses(directives: Iterable[str], index_policy: bool = False) -> tuple[str, ...]:
    """The uses a set of robots directives reserves: AI training for noai/noimageai/noml (and for
    the index directives under `index_policy`), search_indexing for noindex/noimageindex/none."""
    found = set(directives)
    uses = []
    if found & AI_DIRECTIVES or (index_policy and found & INDEX_DIRECTIVES):
        uses.append("ai_training")
    if found & INDEX_DIRECTIVES:
        uses.append("search_indexing")
    return expand_uses(uses)


def x_robots_signals(
    value: str,
    agent_names: Sequence[str],
    location: str,
    index_policy: bool = False,
    name: str = "x-robots-tag",
    evidence: str | None = None,
) -> list[Signal]:
    """Reserved signals (one per agent scope that applies) of one X-Robots-Tag line or robots meta."""
    by_scope: dict[str, list[str]] = {}
    for scope, directive in robots_directives(value):
        agent = _scope_agent(scope, agent_names)
        if agent is not None and (directive in AI_DIRECTIVES or directive in INDEX_DIRECTIVES):
            by_scope.setdefault(agent, []).append(directive)
    out = []
    for agent, directives in by_scope.items():
        uses = reserved_uses(directives, index_policy)
        out.append(Signal(name, "reserved", uses, location, evidence or value, agent=agent))
    return out


def _dictionary(value: str) -> list[tuple[str, str]]:
    """Loose "a=y, b=n;param" -> [("a", "y"), ("b", "n")] for Content-Signal (not a structured field)."""
    out = []
    for member in value.split(","):
        member = member.split(";", 1)[0].strip()
        if not member:
            continue
        key, _, val = member.partition("=")
        out.append((key.strip().lower(), val.strip().strip('"').lower()))
    return out


def content_usage(value: str) -> dict[str, str] | None:
    """The y/n preferences of a Content-Usage value (RFC 9651 Dictionary); None when it does not
    parse (RFC 9651 4.2: a parse failure means the whole field is ignored).

    >>> content_usage('train-ai=n, search=y, ai-use="n", train-ai=y')
    {'search': 'y', 'train-ai': 'y'}
    >>> content_usage("Train-AI=n") is None
    True
    """
    import http_sf

    try:
        parsed = http_sf.parse(value.encode("latin-1", "replace"), tltype="dictionary")
    except (http_sf.StructuredFieldError, ValueError, TypeError):
        return None
    out: dict[str, str] = {}
    if not isinstance(parsed, dict):
        return None
    for key, member in parsed.items():  # a dict: a repeated key already holds its last value
        item = member[0] if isinstance(member, tuple) else None
        if isinstance(item, http_sf.Token) and str(item) in ("y", "n"):
            out[key] = str(item)
    return dict(sorted(out.items()))


def content_usage_signals(value: str, location: str, evidence: str) -> list[Signal]:
    """IETF aipref Content-Usage: per use, its own preference or the nearest parent's decides."""
    stated = content_usage(value)
    if not stated:
        return []
    decided = {
        use: next((stated[k] for k in chain if k in stated), None) for use, chain in _USAGE.values()
    }
    reserved = tuple(u for u in decided if decided[u] == "n")
    allowed = tuple(u for u in decided if decided[u] == "y")
    out = []
    if reserved:
        out.append(Signal("content-usage", "reserved", reserved, location, evidence))
    if allowed:
        out.append(Signal("content-usage", "allowed", allowed, location, evidence))
    return out


def content_signal_signals(value: str, location: str, evidence: str) -> list[Signal]:
    """Cloudflare Content-Signal: `ai-train`, `search`, `ai-input` = yes / no."""
    reserved, allowed = [], []
    for key, val in _dictionary(value):
        if key in _SIGNAL_KEYS and val in ("no", "n"):
            reserved.append(_SIGNAL_KEYS[key])
        elif key in _SIGNAL_KEYS and val in ("yes", "y"):
            allowed.append(_SIGNAL_KEYS[key])
    out = []
    if reserved:
        out.append(Signal("content-signal", "reserved", expand_uses(reserved), location, evidence))
    rest = tuple(u for u in expand_uses(allowed) if u not in expand_uses(reserved))
    if rest:
        out.append(Signal("content-signal", "allowed", rest, location, evidence))
    return out


def signals(
    header_lines: Sequence[tuple[str, str]],
    agent_names: Sequence[str] = DEFAULT_AGENTS,
    index_policy: bool = False,
    location: str = "HTTP response headers",
) -> list[Signal]:
    """All header signals of one response. `header_lines` keeps repeated headers as separate pairs.

    Returns at least one signal: when nothing reserves, an "allowed" x-robots-tag signal saying what
    was read (so a report can show the headers were checked).
    """
    out: list[Signal] = []
    xrt_lines: list[str] = []
    tdm_values: list[tuple[int, str]] = []
    policies: list[str] = []
    usage: list[tuple[int, str]] = []
    for number, (raw_name, raw_value) in enumerate(list(header_lines)[:_MAX_LINES], 1):
        name, value = str(raw_name).strip().lower(), str(raw_value).strip()
        text = f"{raw_name}: {raw_value}"
        where = f"{location} ({raw_name}, line {number})"
        if name == "x-robots-tag":
            xrt_lines.append(text)
            out += x_robots_signals(value, agent_names, where, index_policy, evidence=text)
        elif name == "tdm-reservation":
            tdm_values.append((number, value))
        elif name == "tdm-policy":
            policies.append(value)
        elif name == "content-usage":
            usage.append((number, value))
        elif name == "content-signal":
            out += content_signal_signals(value, where, text)
    if usage:
        # RFC 9651 4.2: all field lines of one field are combined, comma-separated, and parsed
        # as one value (so a later line's duplicate key wins, and one bad line voids them all).
        joined = ", ".join(v for _, v in usage)
        lines = ", ".join(str(n) for n, _ in usage)
        where = f"{location} (Content-Usage, line {lines})"
        out += content_usage_signals(joined, where, f"Content-Usage: {joined}")
    policy = f"; tdm-policy: {policies[0]}" if policies else ""
    for number, value in tdm_values:
        where = f"{location} (tdm-reservation, line {number})"
        if value == "1":
            out.append(
                Signal(
                    "tdm-header",
                    "reserved",
                    expand_uses(["data_mining"]),
                    where,
                    f"tdm-reservation: 1{policy}",
                )
            )
        elif value == "0":
            out.append(Signal("tdm-header", "allowed", USES, where, "tdm-reservation: 0"))
        # any other value: treated as unset (TDMRep), no signal
    if xrt_lines and not any(s.signal == "x-robots-tag" for s in out):
        out.append(Signal("x-robots-tag", "allowed", USES, location, " | ".join(xrt_lines)))
    if not out:
        out.append(
            Signal(
                "x-robots-tag",
                "allowed",
                USES,
                location,
                "no X-Robots-Tag, tdm-reservation, Content-Usage or Content-Signal header",
            )
        )
    return out
