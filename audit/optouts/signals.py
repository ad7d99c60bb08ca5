"""The shared vocabulary of the consent stage: what a signal says, for which uses, and how to combine them.

Every parser in `audit.optouts` returns `list[Signal]`. A `Signal` records one decision taken from one
source (a robots.txt group, one X-Robots-Tag line, an XMP property...) with the exact text that decided it,
so a user can check the verdict by hand.

>>> s = Signal("x-robots-tag", "reserved", expand_uses(["ai_training"]), "X-Robots-Tag", "noai")
>>> s.uses
('genai_training', 'ai_training')
>>> most_restrictive(["allowed", "unchecked"])
'unchecked'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Generative AI training; any AI/ML training; any text-and-data mining. A reservation of a wider use implies
# the narrower ones: data_mining -> ai_training -> genai_training (TDM covers all training; all training
# covers generative training).
USES: tuple[str, ...] = ("genai_training", "ai_training", "data_mining")
# Uses reported on their own and never implied by (or implying) the training uses: being listed by a
# search engine (noindex, noimageindex, none; AIPREF `search`; PLUS "except search engine indexing")
# and being fed to a trained model at inference time (AIPREF `ai-use`, C2PA/CAWG `ai_inference`).
# Informational: `audit filter` ignores them unless asked to exclude them (`exclude_uses`).
INFO_USES: tuple[str, ...] = ("search_indexing", "ai_inference")
ALL_USES: tuple[str, ...] = (*USES, *INFO_USES)

# Most restrictive first. "unchecked": a source that should have been consulted was unavailable (registry
# missing, fetch failed). A robots.txt answering 5xx is *reserved* (RFC 9309 2.3.1.4: disallow all), not
# unchecked. "not_evaluable": the signal cannot apply to this row (no page URL, no image bytes, malformed
# URL). Neither of the middle two ever counts as "allowed".
STATES: tuple[str, ...] = ("reserved", "unchecked", "not_evaluable", "allowed")

SIGNAL_NAMES: tuple[str, ...] = (
    "registry-domain",
    "registry-url",
    "x-robots-tag",
    "html-meta-robots",
    "robots.txt",
    "ai.txt",
    "tdmrep.json",
    "tdm-header",
    "tdm-meta",
    "iptc-xmp",
    "c2pa",
    "content-usage",
    "content-signal",
    "spawning-api",
)

# The sources a signal is read from, as `--require` names them. Coverage (`optout/coverage.parquet`)
# records per row and source whether it was evaluated, has no source for this row, was not
# consulted, or is missing (should have been checked and was not).
SOURCES: dict[str, tuple[str, ...]] = {
    "registry": ("registry-domain", "registry-url"),
    "spawning": ("spawning-api",),
    "embedded": ("iptc-xmp", "c2pa"),
    "headers": ("x-robots-tag", "tdm-header", "content-usage", "content-signal"),
    "page": ("html-meta-robots", "tdm-meta"),
    "robots": ("robots.txt",),
    "ai_txt": ("ai.txt",),
    "tdmrep": ("tdmrep.json",),
}
COVERAGE_STATES: tuple[str, ...] = ("evaluated", "missing", "absent", "not_consulted")

AUDIT_AGENT = "audit-dataset-auditor"
AI_AGENTS: tuple[str, ...] = (
    "CCBot",
    "GPTBot",
    "Google-Extended",
    "anthropic-ai",
    "ClaudeBot",
    "Applebot-Extended",
    "Bytespider",
    "PerplexityBot",
    "cohere-ai",
    "Meta-ExternalAgent",
    "img2dataset",
)
DEFAULT_AGENTS: tuple[str, ...] = (*AI_AGENTS, AUDIT_AGENT)

EVIDENCE_MAX = 300

_IMPLIES = {
    "data_mining": ("genai_training", "ai_training", "data_mining"),
    "ai_training": ("genai_training", "ai_training"),
    "genai_training": ("genai_training",),
    "search_indexing": ("search_indexing",),
    "ai_inference": ("ai_inference",),
}


@dataclass(frozen=True)
class Signal:
    """One decision from one source. `uses` is already expanded (see `expand_uses`) when `state` is reserved."""

    signal: str  # one of SIGNAL_NAMES
    state: str  # one of STATES
    uses: tuple[str, ...]  # the uses this state applies to
    location: str  # where it was found: URL, file + line, header name, "image bytes (XMP)"
    evidence: str  # the exact text that decided it (<= 300 chars, control chars escaped)
    agent: str = "*"  # the user agent a rule was scoped to

    def __post_init__(self) -> None:
        # Fail loudly on a typo in a parser rather than write an unknown state to disk.
        if self.signal not in SIGNAL_NAMES:
            raise ValueError(f"unknown signal name {self.signal!r}; expected one of {SIGNAL_NAMES}")
        if self.state not in STATES:
            raise ValueError(f"unknown state {self.state!r}; expected one of {STATES}")
        bad = [u for u in self.uses if u not in ALL_USES]
        if bad:
            raise ValueError(f"unknown uses {bad}; expected a subset of {ALL_USES}")
        object.__setattr__(self, "evidence", clean_evidence(self.evidence))
        object.__setattr__(self, "location", clean_evidence(self.location))


def expand_uses(reserved_uses: Iterable[str]) -> tuple[str, ...]:
    """The uses a reservation covers, widened by implication, in `USES` order.

    >>> expand_uses(["data_mining"])
    ('genai_training', 'ai_training', 'data_mining')
    """
    covered: set[str] = set()
    for use in reserved_uses:
        if use not in _IMPLIES:
            raise ValueError(f"unknown use {use!r}; expected one of {ALL_USES}")
        covered.update(_IMPLIES[use])
    return tuple(u for u in ALL_USES if u in covered)


def most_restrictive(states: Iterable[str]) -> str:
    """The most restrictive of `states`; "not_evaluable" when there are none (nothing applied to the row).

    >>> most_restrictive(["allowed", "reserved", "unchecked"])
    'reserved'
    """
    rank = {s: i for i, s in enumerate(STATES)}
    best = None
    for state in states:
        if state not in rank:
            raise ValueError(f"unknown state {state!r}; expected one of {STATES}")
        if best is None or rank[state] < rank[best]:
            best = state
    return best if best is not None else "not_evaluable"


_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def product_token(agent: str) -> str:
    """The product token of a user-agent string, lower-cased, for case-insensitive agent matching.

    Digits are kept (unlike Google's parser) because "img2dataset" is a real token.

    >>> product_token("CCBot/2.0 (https://commoncrawl.org/faq/)"), product_token("*")
    ('ccbot', '*')
    """
    agent = agent.strip()
    if agent.startswith("*"):
        return "*"
    end = 0
    while end < len(agent) and agent[end] in _TOKEN_CHARS:
        end += 1
    return agent[:end].lower()


def clean_evidence(text: str, limit: int = EVIDENCE_MAX) -> str:
    """Escape control characters (so a NUL or CR in hostile input cannot corrupt a report) and cap the length."""
    if not isinstance(text, str):
        text = str(text)
    out = []
    for ch in text[: limit * 2]:
        code = ord(ch)
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    joined = "".join(out)
    if len(joined) > limit:
        joined = joined[: limit - 1] + "…"
    return joined
