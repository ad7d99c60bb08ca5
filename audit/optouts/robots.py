"""robots.txt (RFC 9309) and Spawning's ai.txt, parsed and matched without regular expressions.

Why not `urllib.robotparser`: it matches user agents by substring, takes the first matching rule
rather than the longest, knows no `*`/`$` wildcards and ignores RFC 9309's status-code rules. Here:

* groups are chosen by product token, case-insensitively; several `User-agent` lines may open one
  group; groups naming the same agent merge; agents without a group fall back to `*`;
* the longest matching pattern wins and `Allow` wins a tie; `*` and a trailing `$` are wildcards;
  percent-encoding is normalised on both sides; `/robots.txt` itself is always allowed;
* matching is linear: a pattern is split at `*` and its literal pieces are found left to right
  (greedy leftmost placement is exact for these patterns), so `/*a*a*a*a*b` cannot backtrack;
* only the first `max_bytes` (500 KiB, RFC 9309 section 2.5) are parsed; the cut drops the last partial
  line so a truncated `Disallow: /private` never becomes a broader `Disallow: /p`; truncation is
  recorded in the evidence;
* HTTP status (RFC 9309 2.3.1): 2xx parse, 3xx left unresolved and 4xx "unavailable" allow all, 5xx
  and network failure "unreachable" disallow all. 429 is treated as unreachable (as Google does): a rate
  limit says "not now", not "no rules". `None` means not fetched at all and gives an "unchecked" signal.

What a disallow reserves (robots.txt is a crawl permission, not a licence, so we count only what
crawling for training needs): a group naming an AI-training agent (`AI_AGENTS`) reserves ai_training
(hence genai_training); a disallow reached through the `*` group, an unreachable robots.txt, or a group
naming our own auditor reserves data_mining (hence all uses), because it withholds the page from every
automated collection. `Content-Signal` (Cloudflare) and `Content-Usage` (IETF aipref) lines inside the
chosen group are read too; Content-Usage lines may start with a path and follow the same longest-match
rule as Allow/Disallow, apply only where crawling is allowed, and rules with identical paths all apply
(most restrictive); a Content-Usage line without a path is malformed and ignored.

`DisallowAITraining` / `AllowAITraining` (draft-canel-robots-ai-control, deployed by Microsoft) are
path rules of the chosen group matched like Disallow/Allow (longest match, Allow wins a tie); a
matching DisallowAITraining reserves ai_training (hence genai_training) for every agent of that group.
They are a usage statement, independent of whether crawling is allowed.

ai.txt uses the same grammar over file patterns (`Disallow: *.jpg`, `Allow: *.txt`) and is matched
case-insensitively (site owners write `*.jpg` and serve `IMG_1.JPG`). A disallow reserves ai_training.
A missing ai.txt (3xx/4xx) allows; an unreachable one is unchecked (ai.txt has no RFC fallback).

>>> rf = parse(b"User-agent: GPTBot\\nDisallow: /images/\\n")
>>> rf.check("GPTBot/1.1", "/images/cat.jpg")
(False, 'line 2 [user-agent: gptbot]: Disallow: /images/')
>>> [s.state for s in signals(rf, "https://example.com/images/cat.jpg", agents=["GPTBot"])]
['reserved']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from audit.optouts import headers, urls
from audit.optouts.signals import (
    AI_AGENTS,
    DEFAULT_AGENTS,
    USES,
    Signal,
    expand_uses,
    product_token,
)

MAX_BYTES = 500 * 1024
_USER_AGENT_KEYS = {"user-agent", "useragent", "user agent"}
_DISALLOW_KEYS = {"disallow", "dissallow", "dissalow", "disalow", "diasllow", "disallaw"}
_ALLOW_KEYS = {"allow"}
_AI_TRAINING_KEYS = {"disallowaitraining": False, "allowaitraining": True}


@dataclass(frozen=True)
class Rule:
    allow: bool
    pattern: str  # as written (stripped), for evidence
    segments: tuple[str, ...]  # normalised literal pieces between `*`
    anchored: bool  # pattern ended with `$`
    length: int  # octets of the normalised pattern: "most specific" = longest
    line: int
    text: str  # the full line as written, for evidence


@dataclass
class _Group:
    agents: list[str] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    ai_rules: list[Rule] = field(default_factory=list)  # DisallowAITraining / AllowAITraining
    # (key, value, line, text) of Content-Signal / Content-Usage lines
    extras: list[tuple[str, str, int, str]] = field(default_factory=list)


def _match_form(text: str, ignore_case: bool) -> str:
    # A literal "*" or "$" in a URL path must equal a "%2A"/"%24" in a pattern (RFC 9309 2.2.3 table).
    out = urls.normalise_percent(text).replace("*", "%2A").replace("$", "%24")
    return out.lower() if ignore_case else out


def _compile(
    allow: bool, value: str, line: int, text: str, kind: str, ignore_case: bool
) -> Rule | None:
    pattern = value.strip()
    if not pattern:
        return None  # "Disallow:" with no path disallows nothing (RFC 9309 2.2.2)
    if kind == "ai.txt" and pattern[0] not in "/*":
        pattern_eff = "/" + pattern
    else:
        pattern_eff = pattern
    anchored = pattern_eff.endswith("$")
    body = pattern_eff[:-1] if anchored else pattern_eff
    segments = tuple(_match_form(piece, ignore_case) for piece in body.split("*"))
    length = sum(len(s) for s in segments) + len(segments) - 1 + (1 if anchored else 0)
    return Rule(allow, pattern, segments, anchored, length, line, text.strip())


def compile_pattern(pattern: str, line: int = 0, allow: bool = True) -> Rule | None:
    """A robots.txt path pattern (`*` anywhere, `$` at the end), compiled for `pattern_matches`;
    None for an empty pattern. TDMRep locations use the same matching."""
    return _compile(allow, pattern, line, pattern, "robots.txt", False)


def pattern_matches(rule: Rule, path: str) -> bool:
    """Does the compiled pattern match `path` (a URL path, percent-encoding normalised here)?"""
    return _matches(rule, _match_form(path, False))


def _matches(rule: Rule, path: str) -> bool:
    """Linear-time wildcard prefix match (no backtracking): place each literal piece leftmost."""
    segs = rule.segments
    first = segs[0]
    if not path.startswith(first):
        return False
    pos = len(first)
    if len(segs) == 1:
        return pos == len(path) if rule.anchored else True
    for seg in segs[1:-1]:
        j = path.find(seg, pos)
        if j < 0:
            return False
        pos = j + len(seg)
    last = segs[-1]
    if rule.anchored:
        return len(path) - len(last) >= pos and path.endswith(last)
    return path.find(last, pos) >= 0


def _lines(text: str) -> Iterable[tuple[int, str]]:
    # RFC 9309 EOL is CR, LF or CRLF; str.splitlines would also split on form feeds and U+2028.
    yield from enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1)


def _key_value(line: str) -> tuple[str, str] | None:
    line = line.split("#", 1)[0].strip().replace("\x00", "")
    if not line:
        return None
    if ":" in line:
        key, value = line.split(":", 1)
    else:  # "Disallow /private": Google accepts a missing colon when the line has exactly two words
        words = line.split()
        if len(words) != 2:
            return None
        key, value = words
    return " ".join(key.lower().split()), value.strip()


class RobotsFile:
    """A parsed robots.txt or ai.txt, or a status-decided stand-in (allow all / disallow all / unchecked)."""

    def __init__(self, kind: str = "robots.txt", ignore_case: bool = False) -> None:
        self.kind = kind
        self.ignore_case = ignore_case
        self.groups: dict[str, list[Rule]] = {}
        self.extras: dict[str, list[tuple[str, str, int, str]]] = {}
        self.ai_rules: dict[str, list[Rule]] = {}
        self.usage_rules: dict[str, list[tuple[Rule, str, int, str]]] = {}  # see _usage_rules
        self.mode = "parsed"  # or "allow_all", "disallow_all", "unchecked"
        self.note = ""  # status evidence, or the truncation note
        self.truncated = False
        self.size = 0

    def group_for(self, agent: str) -> str | None:
        """The group token that governs `agent`: its own product token, else "*", else None."""
        token = product_token(agent)
        if token and token in self.groups:
            return token
        return "*" if "*" in self.groups else None

    def decide(self, agent: str, path_and_query: str) -> tuple[bool | None, str, str | None]:
        """(allowed, evidence, group token). allowed is None when the file was never fetched."""
        if self.mode == "unchecked":
            return None, self.note, None
        if self.mode == "allow_all":
            return True, self.note, None
        if self.mode == "disallow_all":
            return False, self.note, "*"
        path = path_and_query if path_and_query.startswith("/") else "/" + path_and_query
        path = _match_form(path, self.ignore_case)
        suffix = f" ({self.note})" if self.note else ""
        if self.kind == "robots.txt" and path == "/robots.txt":
            return True, "/robots.txt is always allowed (RFC 9309 2.2.2)" + suffix, None
        token = self.group_for(agent)
        if token is None:
            return (
                True,
                f"no group for {product_token(agent) or agent!r} and no * group" + suffix,
                None,
            )
        for rule in self.groups[token]:  # sorted: longest first, Allow before Disallow on a tie
            if _matches(rule, path):
                return (
                    rule.allow,
                    f"line {rule.line} [user-agent: {token}]: {rule.text}" + suffix,
                    token,
                )
        return True, f"no rule matches in group [user-agent: {token}]" + suffix, token

    def check(self, agent: str, path_and_query: str) -> tuple[bool | None, str]:
        """(allowed, evidence) for `agent` fetching `path_and_query` ("/a/b?x"); allowed is None if unfetched."""
        allowed, evidence, _ = self.decide(agent, path_and_query)
        return allowed, evidence


def parse(body: bytes, max_bytes: int = MAX_BYTES, kind: str = "robots.txt") -> RobotsFile:
    """Parse a robots.txt body. Never raises: garbage lines are ignored, as RFC 9309 2.2 asks."""
    rf = RobotsFile(kind=kind, ignore_case=(kind == "ai.txt"))
    body = bytes(body or b"")
    rf.size = len(body)
    if len(body) > max_bytes:
        cut = body[:max_bytes]
        last_eol = max(cut.rfind(b"\n"), cut.rfind(b"\r"))
        body = cut[: last_eol + 1] if last_eol >= 0 else b""
        rf.truncated = True
        rf.note = f"{kind} truncated: parsed {len(body)} of {rf.size} bytes"
    text = body.decode("utf-8", "surrogateescape").lstrip("\ufeff")
    groups: list[_Group] = []
    current: _Group | None = None
    last_was_agent = False
    for number, line in _lines(text):
        kv = _key_value(line)
        if kv is None:
            continue
        key, value = kv
        if key in _USER_AGENT_KEYS:
            token = product_token(value)
            if not token:
                continue
            if current is None or not last_was_agent:
                current = _Group()
                groups.append(current)
            current.agents.append(token)
            last_was_agent = True
        elif key in _ALLOW_KEYS or key in _DISALLOW_KEYS:
            last_was_agent = False
            if current is None:
                continue  # rules before any User-agent line belong to no group
            rule = _compile(key in _ALLOW_KEYS, value, number, line, kind, rf.ignore_case)
            if rule is not None:
                current.rules.append(rule)
        elif key in _AI_TRAINING_KEYS:
            last_was_agent = False
            if current is None:
                continue
            rule = _compile(_AI_TRAINING_KEYS[key], value, number, line, kind, rf.ignore_case)
            if rule is not None:
                current.ai_rules.append(rule)
        elif key in ("content-signal", "content-usage") and current is not None:
            last_was_agent = False
            current.extras.append((key, value, number, line.strip()))
        # Sitemap and unknown lines neither end nor join a group.
    for group in groups:
        for token in group.agents:
            rf.groups.setdefault(token, []).extend(group.rules)
            rf.extras.setdefault(token, []).extend(group.extras)
            rf.ai_rules.setdefault(token, []).extend(group.ai_rules)
    for rules in (*rf.groups.values(), *rf.ai_rules.values()):
        rules.sort(key=lambda r: (-r.length, not r.allow))
    return rf


def parse_aitxt(body: bytes, max_bytes: int = MAX_BYTES) -> RobotsFile:
    """Parse a Spawning ai.txt body (robots grammar, file patterns, case-insensitive matching)."""
    return parse(body, max_bytes=max_bytes, kind="ai.txt")


def from_status(status: int | None, body: bytes = b"", kind: str = "robots.txt") -> RobotsFile:
    """The RobotsFile a fetch result stands for. `status` None = not fetched; 0 = network failure."""
    if status is not None and 200 <= status < 300:
        return parse(body, kind=kind)
    rf = RobotsFile(kind=kind, ignore_case=(kind == "ai.txt"))
    if status is None:
        rf.mode, rf.note = "unchecked", f"{kind} not fetched"
    elif kind == "ai.txt":
        if 300 <= status < 500 and status != 429:
            rf.mode, rf.note = "allow_all", f"no ai.txt (HTTP {status})"
        else:
            rf.mode, rf.note = "unchecked", f"ai.txt unreachable (HTTP {status or 'network error'})"
    elif 300 <= status < 400:
        # RFC 9309 2.3.1.2: "If there are more than five consecutive redirects, crawlers MAY
        # assume that the robots.txt file is unavailable" (2.3.1.3: unavailable = allow all).
        rf.mode, rf.note = (
            "allow_all",
            f"HTTP {status}: more than five redirects or a redirect loop, robots.txt unavailable, "
            "allow all (RFC 9309 2.3.1.2)",
        )
    elif status == 429:
        rf.mode, rf.note = (
            "disallow_all",
            "HTTP 429: rate-limited, treated as unreachable, disallow all (as Google does)",
        )
    elif 400 <= status < 500:
        rf.mode, rf.note = (
            "allow_all",
            f"HTTP {status}: robots.txt unavailable, allow all (RFC 9309 2.3.1.3)",
        )
    elif status <= 0 or 500 <= status < 600:
        what = "network error" if status <= 0 else f"HTTP {status}"
        rf.mode, rf.note = (
            "disallow_all",
            f"{what}: robots.txt unreachable, disallow all (RFC 9309 2.3.1.4)",
        )
    else:
        rf.mode, rf.note = "unchecked", f"HTTP {status}: unexpected status for {kind}"
    return rf


def _resolve(source: RobotsFile | int | None, kind: str) -> RobotsFile:
    if isinstance(source, RobotsFile):
        return source
    return from_status(source, b"", kind=kind)


def _not_evaluable(name: str, url: str) -> list[Signal]:
    return [Signal(name, "not_evaluable", USES, "image URL", f"malformed URL: {str(url)[:200]!r}")]


def signals(
    robots: RobotsFile | int | None,
    url: str,
    agents: Sequence[str] = DEFAULT_AGENTS,
    location: str | None = None,
) -> list[Signal]:
    """Signals robots.txt gives for fetching `url` as each of `agents` (see module doc for the uses)."""
    rf = _resolve(robots, "robots.txt")
    path = urls.path_and_query(url)
    if path is None:
        return _not_evaluable("robots.txt", url)
    where = location or f"{urls.origin(url)}/robots.txt"
    if rf.mode == "unchecked":
        return [Signal("robots.txt", "unchecked", USES, where, rf.note)]
    ai = {a.lower() for a in AI_AGENTS}
    out: list[Signal] = []
    seen: set[tuple[str, str]] = set()
    groups_done: set[tuple[str, bool | None]] = set()
    first_evidence = ""
    for agent in agents:
        allowed, evidence, token = rf.decide(agent, path)
        first_evidence = first_evidence or evidence
        if not allowed:
            if token == "*":
                scope, uses = "*", expand_uses(["data_mining"])
            elif agent.lower() in ai:
                scope, uses = agent, expand_uses(["ai_training"])
            else:
                scope, uses = agent, expand_uses(["data_mining"])
            if (scope, evidence) not in seen:
                seen.add((scope, evidence))
                out.append(Signal("robots.txt", "reserved", uses, where, evidence, agent=scope))
        if token is not None and rf.mode == "parsed" and (token, allowed) not in groups_done:
            groups_done.add((token, allowed))  # agents sharing a group get the same answer
            extra = _ai_training_signal(rf, token, path, where)
            # attach draft 3.1: "Usage preferences apply only to those resources that can be
            # crawled according to Allow/Disallow rules" (a disallow already reserved above).
            extra += _extras(rf, token, path, where) if allowed else []
            for sig in extra:
                if (sig.signal + sig.agent, sig.evidence) not in seen:
                    seen.add((sig.signal + sig.agent, sig.evidence))
                    out.append(sig)
    if not any(s.signal == "robots.txt" for s in out):
        evidence = f"{path} allowed for {len(agents)} agents; e.g. {first_evidence}"
        out.insert(0, Signal("robots.txt", "allowed", USES, where, evidence))
    return out


def _ai_training_signal(rf: RobotsFile, token: str, path: str, where: str) -> list[Signal]:
    """DisallowAITraining / AllowAITraining of group `token` for `path` (longest match wins)."""
    for rule in rf.ai_rules.get(token, []):  # sorted like the Allow/Disallow rules
        if _matches(rule, _match_form(path, rf.ignore_case)):
            evidence = f"line {rule.line} [user-agent: {token}]: {rule.text}"
            if rule.allow:
                return [Signal("robots.txt", "allowed", USES, where, evidence, agent=token)]
            uses = expand_uses(["ai_training"])
            return [Signal("robots.txt", "reserved", uses, where, evidence, agent=token)]
    return []


def _extras(rf: RobotsFile, token: str, path: str, where: str) -> list[Signal]:
    """Content-Signal lines of the group, and the longest-matching Content-Usage rules.

    draft-ietf-aipref-attach 3: a Content-Usage rule is a path ("It always starts with "/"")
    then the preference; the longest matching path applies, as for Allow/Disallow; rules with
    identical paths all apply (combined most-restrictive, unlike Allow/Disallow). A rule without
    a path is malformed and ignored.
    """
    out: list[Signal] = []
    for key, value, line, text in rf.extras.get(token, []):
        if key == "content-signal":
            for sig in headers.content_signal_signals(value, f"{where} line {line}", text):
                out.append(_scoped(sig, token))
    best: list[tuple[int, int, str, str]] = []  # (path length, line, value, text) at the max length
    matchable = _match_form(path, False)
    for rule, pref, line, text in _usage_rules(rf, token):  # longest first
        if best and rule.length < best[0][0]:
            break
        if not _matches(rule, matchable):
            continue
        if not best or rule.length > best[0][0]:
            best = [(rule.length, line, pref, text)]
        elif rule.length == best[0][0]:
            best.append((rule.length, line, pref, text))
    for _, line, value, text in best:
        for sig in headers.content_usage_signals(value, f"{where} line {line}", text):
            out.append(_scoped(sig, token))
    return out


def _usage_rules(rf: RobotsFile, token: str) -> list[tuple[Rule, str, int, str]]:
    """The Content-Usage rules of group `token`, compiled once per file: (path rule, preference,
    line, text); lines without a path are dropped (malformed)."""
    if token not in rf.usage_rules:
        rules = []
        for key, value, line, text in rf.extras.get(token, []):
            parts = value.strip().replace("\t", " ").split(" ", 1)
            if key != "content-usage" or len(parts) != 2 or not parts[0].startswith("/"):
                continue
            rule = compile_pattern(parts[0], line)
            if rule is not None:
                rules.append((rule, parts[1].strip(), line, text))
        rules.sort(key=lambda r: (-r[0].length, r[2]))  # longest first, then file order
        rf.usage_rules[token] = rules
    return rf.usage_rules[token]


def _scoped(sig: Signal, token: str) -> Signal:
    return Signal(sig.signal, sig.state, sig.uses, sig.location, sig.evidence, agent=token)


def aitxt_signals(
    aitxt: RobotsFile | int | None,
    url: str,
    agents: Sequence[str] = DEFAULT_AGENTS,
    location: str | None = None,
) -> list[Signal]:
    """Signals Spawning's ai.txt gives for `url`: a disallow for any of `agents` (or `*`) reserves ai_training."""
    rf = _resolve(aitxt, "ai.txt")
    path = urls.path_and_query(url)
    if path is None:
        return _not_evaluable("ai.txt", url)
    where = location or f"{urls.origin(url)}/ai.txt"
    if rf.mode == "unchecked":
        return [Signal("ai.txt", "unchecked", USES, where, rf.note)]
    out: list[Signal] = []
    first_evidence = ""
    for agent in agents:
        allowed, evidence, token = rf.decide(agent, path)
        first_evidence = first_evidence or evidence
        if allowed is False:
            scope = "*" if token == "*" else agent
            if all(s.agent != scope or s.evidence != evidence for s in out):
                out.append(
                    Signal(
                        "ai.txt",
                        "reserved",
                        expand_uses(["ai_training"]),
                        where,
                        evidence,
                        agent=scope,
                    )
                )
    if not out:
        out.append(
            Signal("ai.txt", "allowed", USES, where, f"{path} allowed; e.g. {first_evidence}")
        )
    return out
