"""Opt-out signals in HTTP response headers: X-Robots-Tag, TDMRep, Content-Usage, Content-Signal.

Done the way the specifications say, where common tools differ:

* every header line is read (not just the first), each on its own; header names and directive names
  are case-insensitive;
* X-Robots-Tag `botname: directives` applies only to that bot; the scope lasts until the next
  `otherbot:` item, so a proxy's merge of two lines into one comma list reads the same; an unscoped
  directive applies to every agent. A scope is a token followed by ":" that is not a directive taking
  a value (`unavailable_after: ...`, `max-snippet: ...`);
* `noai`, `noimageai` (our rows are images) and `noml` reserve ai_training (hence genai_training).
  `index_policy=True` also counts `noindex`, `noimageindex` and `none` as a reservation of ai_training:
  off by default, because "do not list me in search" is not "do not train on me";
* `tdm-reservation: 1` (W3C TDMRep) reserves data_mining, with `tdm-policy` as evidence; `0` allows; any
  other value is not_evaluable;
* `Content-Usage` (IETF aipref): `tdm`, `train-ai` and `train-genai` (also the draft's older `ai`,
  `genai`) with `y`/`n`; the most specific stated category decides each use, so `tdm=n, train-ai=y`
  reserves data_mining but allows AI training;
* `Content-Signal` (Cloudflare): `ai-train=no` reserves ai_training, `yes` allows.
Unknown directives and keys are ignored without error.

>>> [(s.signal, s.state, s.agent) for s in signals([("x-robots-tag", "otherbot: noai"), ("X-Robots-Tag", "GPTBot: noimageai")])]
[('x-robots-tag', 'reserved', 'GPTBot')]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from audit.optouts.signals import DEFAULT_AGENTS, USES, Signal, expand_uses, product_token

# Directives that take a value after ":"; anything else before a ":" is a user-agent scope.
_VALUE_DIRECTIVES = {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
AI_DIRECTIVES = frozenset({"noai", "noimageai", "noml"})
INDEX_DIRECTIVES = frozenset({"noindex", "noimageindex", "none"})
_USAGE_KEYS = {
    "tdm": "data_mining",
    "train-ai": "ai_training",
    "ai": "ai_training",
    "train-genai": "genai_training",
    "genai": "genai_training",
}
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
        if agent is not None and reserving([directive], index_policy):
            by_scope.setdefault(agent, []).append(directive)
    return [
        Signal(
            name, "reserved", expand_uses(["ai_training"]), location, evidence or value, agent=agent
        )
        for agent in by_scope
    ]


def _dictionary(value: str) -> list[tuple[str, str]]:
    """Loose RFC 8941 dictionary: "a=y, b=n;param" -> [("a", "y"), ("b", "n")]; bare keys get ""."""
    out = []
    for member in value.split(","):
        member = member.split(";", 1)[0].strip()
        if not member:
            continue
        key, _, val = member.partition("=")
        out.append((key.strip().lower(), val.strip().strip('"').lower()))
    return out


def content_usage_signals(value: str, location: str, evidence: str) -> list[Signal]:
    """IETF aipref Content-Usage: per use, the most specific category stated decides."""
    stated: dict[str, str] = {}
    for key, val in _dictionary(value):
        if key in _USAGE_KEYS and val in ("y", "n"):
            stated[key] = val
    if not stated:
        return []
    chains = {
        "genai_training": ("train-genai", "genai", "train-ai", "ai", "tdm"),
        "ai_training": ("train-ai", "ai", "tdm"),
        "data_mining": ("tdm",),
    }
    decided = {
        use: next((stated[k] for k in chain if k in stated), None) for use, chain in chains.items()
    }
    reserved = tuple(u for u in USES if decided[u] == "n")
    allowed = tuple(u for u in USES if decided[u] == "y")
    out = []
    if reserved:
        out.append(Signal("content-usage", "reserved", reserved, location, evidence))
    if allowed:
        out.append(Signal("content-usage", "allowed", allowed, location, evidence))
    return out


def content_signal_signals(value: str, location: str, evidence: str) -> list[Signal]:
    """Cloudflare Content-Signal: `ai-train=no` reserves ai_training; `ai-train=yes` allows it."""
    for key, val in _dictionary(value):
        if key == "ai-train" and val in ("no", "n"):
            return [
                Signal(
                    "content-signal", "reserved", expand_uses(["ai_training"]), location, evidence
                )
            ]
        if key == "ai-train" and val in ("yes", "y"):
            return [
                Signal(
                    "content-signal", "allowed", expand_uses(["ai_training"]), location, evidence
                )
            ]
    return []


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
            out += content_usage_signals(value, where, text)
        elif name == "content-signal":
            out += content_signal_signals(value, where, text)
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
        else:
            out.append(
                Signal(
                    "tdm-header",
                    "not_evaluable",
                    USES,
                    where,
                    f"tdm-reservation: {value!r} is not 0 or 1",
                )
            )
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
