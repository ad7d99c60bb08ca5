"""robots.txt (RFC 9309) and ai.txt: the RFC's own examples, status codes, agents, hostile input."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.optouts import robots
from audit.optouts.signals import AI_AGENTS, AUDIT_AGENT, USES

DATA = Path(__file__).parent / "data" / "optout"
RFC = (DATA / "robots_rfc9309_example.txt").read_bytes()


def allowed(body: bytes | robots.RobotsFile, agent: str, path: str) -> bool | None:
    rf = body if isinstance(body, robots.RobotsFile) else robots.parse(body)
    return rf.check(agent, path)[0]


# --- RFC 9309 section 5.1 -------------------------------------------------------------------
@pytest.mark.parametrize(
    "agent,path,expected",
    [
        ("foobot", "/example/page.html", True),
        ("foobot", "/example/allowed.gif", True),
        ("foobot", "/example/other.html", False),
        ("foobot", "/", False),
        ("FooBot/1.2 (+https://foo.example)", "/publications/x", False),  # product token, any case
        ("barbot", "/example/page.html", False),
        ("bazbot", "/example/page.html", False),  # several user-agent lines open one group
        ("barbot", "/picture.gif", True),  # a named group does not inherit the * rules
        ("quxbot", "/example/anything", True),  # an empty group allows everything
        ("otherbot", "/picture.gif", False),  # falls back to *: "*.gif$"
        ("otherbot", "/picture.gif?x=1", True),  # "$" anchors the end
        ("otherbot", "/example/x", False),
        ("otherbot", "/publications/x", True),
        ("otherbot", "/robots.txt", True),
    ],
)
def test_rfc9309_simple_example(agent: str, path: str, expected: bool) -> None:
    assert allowed(RFC, agent, path) is expected


def test_rfc9309_longest_match() -> None:
    body = b"User-Agent: foobot\nAllow: /example/page/\nDisallow: /example/page/disallowed.gif\n"
    assert allowed(body, "foobot", "/example/page/") is True
    assert allowed(body, "foobot", "/example/page/disallowed.gif") is False


def test_allow_wins_a_tie_and_order_does_not_matter() -> None:
    for body in (
        b"User-agent: *\nDisallow: /page\nAllow: /page\n",
        b"User-agent: *\nAllow: /page\nDisallow: /page\n",
    ):
        assert allowed(body, "x", "/page") is True
    body = b"User-agent: *\nAllow: /$\nDisallow: /\n"
    assert allowed(body, "x", "/") is True and allowed(body, "x", "/page.htm") is False
    body = b"User-agent: *\nAllow: /page\nDisallow: /*.html\n"  # 7 octets beat 5
    assert allowed(body, "x", "/page.html") is False and allowed(body, "x", "/page.php") is True


@pytest.mark.parametrize(
    "pattern,path,expected",
    [
        ("/fish*", "/fish", True),
        ("/fish*", "/fishheads/yummy.html", True),
        ("/fish*", "/Fish.asp", False),  # paths are case-sensitive
        ("/*.php$", "/filename.php", True),
        ("/*.php$", "/folder/filename.php", True),
        ("/*.php$", "/filename.php?parameters", False),
        ("/*.php$", "/filename.php/", False),
        ("/fish*.php", "/fishheads/catfish.php?parameters", True),
        ("/fish*.php", "/Fish.PHP", False),
        ("/path/file-with-a-%2A.html", "/path/file-with-a-*.html", True),  # RFC 9309 2.2.3
        ("/path/foo-%24", "/path/foo-$", True),
        ("/foo/bar?baz=quz", "/foo/bar?baz=quz", True),  # RFC 9309 2.2.2 table
        ("/foo/bar/\u2603", "/foo/bar/%E2%98%83", True),
        ("/foo/bar/%E2%98%83", "/foo/bar/%e2%98%83", True),
        ("/foo/bar/%62%61%7A", "/foo/bar/baz", True),
        ("/foo/bar/baz", "/foo/bar/%62%61%7A", True),
        ("/a%2Fb", "/a/b", False),  # an encoded reserved "/" is not a path separator
        ("/a$b", "/a$b", True),  # "$" is only special at the end
    ],
)
def test_wildcards_and_percent_encoding(pattern: str, path: str, expected: bool) -> None:
    body = f"User-agent: *\nDisallow: {pattern}\n".encode()
    assert allowed(body, "x", path) is (not expected)


def test_groups_for_one_agent_merge_and_agent_matching_is_case_insensitive() -> None:
    body = b"User-agent: GPTBot\nDisallow: /a/\n\nUser-agent: *\nDisallow: /\n\nuser-agent: gptbot\nDisallow: /b/\n"
    rf = robots.parse(body)
    assert rf.check("GPTBot", "/a/x")[0] is False and rf.check("gptbot", "/b/x")[0] is False
    assert rf.check("GPTBOT", "/c/x")[0] is True  # its own group, not the * one
    assert rf.check("img2dataset", "/c/x")[0] is False  # digits belong to the token


def test_rules_before_any_user_agent_and_unknown_lines_are_ignored() -> None:
    body = b"Disallow: /\nSitemap: https://x.example/s.xml\nUser-agent: a\nCrawl-delay: 5\nDisallow: /p\nFoo: bar\n"
    rf = robots.parse(body)
    assert rf.check("other", "/anything")[0] is True
    assert rf.check("a", "/p")[0] is False


def test_line_endings_bom_comments_nul_and_missing_colon() -> None:
    body = b"\xef\xbb\xbfUser-agent: *  # all\rDisallow: /cr # comment\r\nDisallow /nocolon\nDis\x00allow: /nul\n"
    rf = robots.parse(body)
    assert rf.check("x", "/cr")[0] is False
    assert rf.check("x", "/nocolon")[0] is False
    assert rf.check("x", "/nul")[0] is False  # a stray NUL does not hide the rule
    assert rf.check("x", "/other")[0] is True


def test_evidence_quotes_the_deciding_line() -> None:
    allowed_, evidence = robots.parse(RFC).check("foobot", "/example/page.html")
    assert allowed_ is True and evidence == "line 8 [user-agent: foobot]: Allow:/example/page.html"


@pytest.mark.parametrize(
    "status,expected,word",
    [
        (200, True, ""),
        (301, True, "unavailable"),
        (404, True, "unavailable"),
        (410, True, "unavailable"),
        (429, False, "429"),
        (500, False, "unreachable"),
        (503, False, "unreachable"),
        (0, False, "network"),
        (None, None, "not fetched"),
    ],
)
def test_status_codes_follow_rfc9309(status: int | None, expected: bool | None, word: str) -> None:
    rf = robots.from_status(status, b"")
    ok, evidence = rf.check("GPTBot", "/img.jpg")
    assert ok is expected and word in evidence


def test_signals_scope_and_uses() -> None:
    url = "https://Example.com/images/cat.jpg"
    sigs = robots.signals(robots.parse(b"User-agent: GPTBot\nDisallow: /images/\n"), url)
    assert [(s.state, s.agent, s.uses) for s in sigs] == [
        ("reserved", "GPTBot", ("genai_training", "ai_training"))
    ]
    assert sigs[0].location == "https://example.com/robots.txt"
    star = robots.signals(robots.parse(b"User-agent: *\nDisallow: /\n"), url)
    assert [(s.state, s.agent, s.uses) for s in star] == [
        ("reserved", "*", USES)
    ]  # one signal, not one per agent
    mine = robots.signals(robots.parse(f"User-agent: {AUDIT_AGENT}\nDisallow: /\n".encode()), url)
    assert [(s.agent, s.uses) for s in mine] == [(AUDIT_AGENT, USES)]
    other = robots.signals(robots.parse(b"User-agent: Googlebot\nDisallow: /\n"), url)
    assert [s.state for s in other] == ["allowed"]


def test_signals_from_status_and_bad_urls() -> None:
    assert [s.state for s in robots.signals(503, "https://a.example/x.jpg")] == ["reserved"]
    assert [s.state for s in robots.signals(404, "https://a.example/x.jpg")] == ["allowed"]
    assert [s.state for s in robots.signals(None, "https://a.example/x.jpg")] == ["unchecked"]
    for bad in ("not a url", "http://", "https://a.example:99999/x", "", "http://a b.example/x"):
        sigs = robots.signals(robots.parse(b""), bad)
        assert [s.state for s in sigs] == ["not_evaluable"] and "malformed URL" in sigs[0].evidence


def test_content_signal_and_content_usage_lines_in_the_chosen_group() -> None:
    body = b"User-agent: *\nContent-Signal: search=yes, ai-train=no\nAllow: /\n\nUser-agent: GPTBot\nContent-Usage: /img/ train-ai=n\n"
    sigs = robots.signals(
        robots.parse(body), "https://a.example/img/x.jpg", agents=["CCBot", "GPTBot"]
    )
    got = {(s.signal, s.state, s.agent) for s in sigs}
    assert ("content-signal", "reserved", "*") in got and (
        "content-usage",
        "reserved",
        "gptbot",
    ) in got
    elsewhere = robots.signals(robots.parse(body), "https://a.example/doc/x.jpg", agents=["GPTBot"])
    assert not any(s.signal == "content-usage" for s in elsewhere)


# --- ai.txt -----------------------------------------------------------------------------------
SPAWNING = b"# Spawning AI\nUser-Agent: *\nDisallow: *.jpg\nDisallow: *.png\nAllow: *.txt\n"


def test_aitxt_file_patterns_case_insensitive() -> None:
    rf = robots.parse_aitxt(SPAWNING)
    for path, ok in [
        ("/a/b.jpg", False),
        ("/IMG_1.JPG", False),
        ("/x.png?w=10", False),
        ("/notes.txt", True),
        ("/a.gif", True),
    ]:
        assert rf.check("img2dataset", path)[0] is ok, path
    sigs = robots.aitxt_signals(rf, "https://a.example/IMG_1.JPG")
    assert [(s.signal, s.state, s.agent, s.uses) for s in sigs] == [
        ("ai.txt", "reserved", "*", ("genai_training", "ai_training"))
    ]
    assert robots.parse_aitxt(b"User-agent: *\nDisallow: /\n").check("x", "/ai.txt")[0] is False


def test_aitxt_statuses() -> None:
    url = "https://a.example/x.jpg"
    assert [s.state for s in robots.aitxt_signals(404, url)] == ["allowed"]
    assert [s.state for s in robots.aitxt_signals(500, url)] == ["unchecked"]
    assert [s.state for s in robots.aitxt_signals(0, url)] == ["unchecked"]
    assert [s.state for s in robots.aitxt_signals(None, url)] == ["unchecked"]


# --- hostile input ----------------------------------------------------------------------------
def test_20_mib_robots_txt_is_capped_and_fast() -> None:
    body = (
        b"User-agent: *\n"
        + b"Disallow: /aaaaaaaaaaaaaaaaaaaaaa\n" * (20 * 1024 * 1024 // 33)
        + b"Disallow: /late\n"
    )
    start = time.perf_counter()
    rf = robots.parse(body)
    ok, evidence = rf.check("GPTBot", "/late")
    assert time.perf_counter() - start < 2.0
    assert (
        rf.truncated and ok is True and "truncated" in evidence
    )  # the rule past 500 KiB is not read


def test_truncation_drops_the_cut_line() -> None:
    body = b"User-agent: *\nDisallow: /private-area\n"
    rf = robots.parse(body, max_bytes=len(b"User-agent: *\nDisallow: /p"))
    assert rf.check("x", "/public")[0] is True  # not the broader "Disallow: /p"


def test_backtracking_patterns_are_linear() -> None:
    body = b"User-agent: *\nDisallow: /*a*a*a*a*a*a*a*a*a*b\nDisallow: /*a*a*a*a*a*a*a*a*a*b$\n"
    rf = robots.parse(body)
    start = time.perf_counter()
    assert rf.check("x", "/" + "a" * 200_000)[0] is True
    assert rf.check("x", "/" + "a" * 200_000 + "b")[0] is False
    hostile = robots.parse(b"User-agent: *\n" + b"Disallow: /*a*a*a*a*a*a*a*a*a*c\n" * 15_000)
    for agent in AI_AGENTS:
        assert hostile.check(agent, "/" + "a" * 2000)[0] is True
    assert time.perf_counter() - start < 3.0


def _reference(pattern: str, path: str) -> bool:
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern
    regex = ".*".join(re.escape(p) for p in body.split("*")) + ("$" if anchored else "")
    return re.match(regex, path, re.DOTALL) is not None


@settings(max_examples=300, deadline=None)
@given(
    st.text("ab/*", min_size=1, max_size=8).map(lambda s: "/" + s)
    | st.text("ab/*", max_size=8).map(lambda s: "/" + s + "$"),
    st.text("ab/", max_size=12).map(lambda s: "/" + s),
)
def test_linear_matcher_agrees_with_a_regex_reference(pattern: str, path: str) -> None:
    body = f"User-agent: *\nDisallow: {pattern}\n".encode()
    assert (allowed(body, "x", path) is False) == _reference(pattern, path)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.text(max_size=20), st.text(max_size=40))
def test_parse_and_check_never_raise(body: bytes, agent: str, path: str) -> None:
    rf = robots.parse(b"User-agent: *\n" + body)
    ok, evidence = rf.check(agent, path)
    assert ok in (True, False) and isinstance(evidence, str)
    robots.signals(rf, "https://a.example/" + path)
