"""X-Robots-Tag, TDMRep headers, Content-Usage, Content-Signal, and the same directives in HTML metas."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.optouts import headers, htmlmeta
from audit.optouts.signals import DEFAULT_AGENTS, USES

AI = ("genai_training", "ai_training")


def states(sigs, name: str = "x-robots-tag") -> list[tuple[str, str]]:
    return [(s.state, s.agent) for s in sigs if s.signal == name]


@pytest.mark.parametrize(
    "value",
    ["noai", "NoImageAI", "noml", "noindex, NOAI", "noai noimageai", " nofollow ,noimageai "],
)
def test_ai_directives_reserve_for_every_agent(value: str) -> None:
    sigs = headers.signals([("X-Robots-Tag", value)])
    assert states(sigs) == [("reserved", "*")] and sigs[0].uses[:2] == AI
    assert sigs[0].evidence == f"X-Robots-Tag: {value}"


def test_header_name_case_and_every_line_read() -> None:
    lines = [
        ("x-robots-tag", "nofollow"),
        ("X-ROBOTS-TAG", "noimageai"),
    ]  # reservation only on line 2
    sigs = headers.signals(lines)
    assert states(sigs) == [("reserved", "*")] and "line 2" in sigs[0].location


def test_agent_scoping() -> None:
    other = headers.signals([("X-Robots-Tag", "otherbot: noai, noimageai")])
    assert states(other) == [("allowed", "*")]  # another bot's rule does not bind anyone else
    mine = headers.signals([("X-Robots-Tag", "ccbot: noai")])
    assert states(mine) == [("reserved", "CCBot")]
    merged = headers.signals([("X-Robots-Tag", "googlebot: noai, GPTBot: noimageai, nofollow")])
    assert states(merged) == [("reserved", "GPTBot")]  # scope lasts until the next "bot:"
    assert states(headers.signals([("X-Robots-Tag", "GPTBot: noai")], agent_names=["CCBot"])) == [
        ("allowed", "*")
    ]


def test_value_directives_are_not_scopes() -> None:
    sigs = headers.signals([("X-Robots-Tag", "unavailable_after: 25 Jun 2010 15:00:00 PST, noai")])
    assert states(sigs) == [("reserved", "*")]
    sigs = headers.signals([("X-Robots-Tag", "max-image-preview: none")])  # "none" here is a value
    assert states(sigs) == [("allowed", "*")]
    sigs = headers.signals([("X-Robots-Tag", "max-image-preview: none")], index_policy=True)
    assert states(sigs) == [("allowed", "*")]


def test_index_policy_is_opt_in() -> None:
    for value in ("noindex", "noimageindex", "none"):
        sigs = headers.signals([("X-Robots-Tag", value)])
        assert [(s.state, s.uses) for s in sigs] == [("reserved", ("search_indexing",))]
        sigs = headers.signals([("X-Robots-Tag", value)], index_policy=True)
        assert [(s.state, s.uses) for s in sigs] == [("reserved", (*AI, "search_indexing"))]


def test_tdm_headers() -> None:
    sigs = headers.signals([("TDM-Reservation", "1"), ("tdm-policy", "https://ex.com/policy.json")])
    tdm = [s for s in sigs if s.signal == "tdm-header"]
    assert [(s.state, s.uses) for s in tdm] == [("reserved", USES)]
    assert tdm[0].evidence == "tdm-reservation: 1; tdm-policy: https://ex.com/policy.json"
    assert states(headers.signals([("tdm-reservation", "0")]), "tdm-header") == [("allowed", "*")]
    assert states(headers.signals([("tdm-reservation", "yes")]), "tdm-header") == []  # unset


@pytest.mark.parametrize(
    "value,reserved,allowed",
    [
        ("train-ai=n", AI, ()),
        ("train-genai=n", ("genai_training",), ()),
        ("all=n", (*USES, "search_indexing", "ai_inference"), ()),
        ("all=n, train-ai=y", ("data_mining", "search_indexing", "ai_inference"), AI),
        ("train-ai=y;source=x, search=n", ("search_indexing",), AI),
        ("TRAIN-AI=N", (), ()),  # RFC 9651 keys are lower-case: a parse failure, no preference
        ("bots=n, foo", (), ()),  # unknown labels are ignored
    ],
)
def test_content_usage(value: str, reserved: tuple, allowed: tuple) -> None:
    sigs = [s for s in headers.signals([("Content-Usage", value)]) if s.signal == "content-usage"]
    assert tuple(u for s in sigs if s.state == "reserved" for u in s.uses) == reserved
    assert tuple(u for s in sigs if s.state == "allowed" for u in s.uses) == allowed


def test_content_signal() -> None:
    assert states(
        headers.signals([("Content-Signal", "search=yes, ai-train=no")]), "content-signal"
    ) == [("reserved", "*"), ("allowed", "*")]
    assert states(headers.signals([("content-signal", "ai-train=yes")]), "content-signal") == [
        ("allowed", "*")
    ]
    sigs = headers.signals([("content-signal", "ai-input=no")])
    assert [(s.state, s.uses) for s in sigs if s.signal == "content-signal"] == [
        ("reserved", ("ai_inference",))
    ]


def test_no_relevant_headers_is_one_allowed_signal() -> None:
    sigs = headers.signals([("Content-Type", "image/jpeg"), ("X-Unknown", "noai")])
    assert [(s.signal, s.state) for s in sigs] == [("x-robots-tag", "allowed")]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["X-Robots-Tag", "tdm-reservation", "Content-Usage", "Content-Signal", "x"]
            ),
            st.text(max_size=60),
        ),
        max_size=6,
    )
)
def test_headers_never_raise(lines: list[tuple[str, str]]) -> None:
    sigs = headers.signals(lines)
    assert sigs and all(len(s.evidence) <= 300 and "\x00" not in s.evidence for s in sigs)


# --- HTML meta --------------------------------------------------------------------------------
def page(head: str) -> bytes:
    return f"<!doctype html><html><head><title>t</title>{head}</head><body>x</body></html>".encode()


def test_meta_robots_and_agent_metas() -> None:
    sigs = htmlmeta.signals(page('<meta name="Robots" content="NOAI, noimageai">'))
    assert states(sigs, "html-meta-robots") == [("reserved", "*")] and sigs[0].uses == AI
    sigs = htmlmeta.signals(
        page('<meta name="ccbot" content="noai"><meta name="googlebot" content="noai">')
    )
    assert states(sigs, "html-meta-robots") == [("reserved", "CCBot")]
    sigs = htmlmeta.signals(page('<meta name="robots" content="index, follow">'))
    assert states(sigs, "html-meta-robots") == [("allowed", "*")]
    assert states(
        htmlmeta.signals(page('<meta name="robots" content="noindex">'), index_policy=True),
        "html-meta-robots",
    ) == [("reserved", "*")]


def test_meta_tdm() -> None:
    sigs = htmlmeta.signals(
        page(
            '<meta name="tdm-reservation" content="1"><meta name="tdm-policy" content="https://ex.com/p">'
        )
    )
    tdm = [s for s in sigs if s.signal == "tdm-meta"]
    assert [(s.state, s.uses) for s in tdm] == [("reserved", USES)] and "https://ex.com/p" in tdm[
        0
    ].evidence
    assert states(
        htmlmeta.signals(page('<meta name="TDM-Reservation" content="0">')), "tdm-meta"
    ) == [("allowed", "*")]


def test_meta_charsets_and_broken_markup() -> None:
    latin1 = page('<meta name="robots" content="noai">').replace(
        b"<title>t", "<title>caf\xe9".encode("latin-1")
    )
    assert states(htmlmeta.signals(latin1), "html-meta-robots") == [("reserved", "*")]
    utf16 = "\ufeff<html><head><meta name='robots' content='noai'></head></html>".encode(
        "utf-16-le"
    )
    assert states(htmlmeta.signals(b"\xff\xfe" + utf16[2:]), "html-meta-robots") == [
        ("reserved", "*")
    ]
    broken = b'<html><head><meta name=robots content=noai <meta name="x\x00" content="<<<"><body'
    assert htmlmeta.signals(broken)  # never raises


def test_metas_in_comments_scripts_and_attribute_values_do_not_count() -> None:
    hidden = page(
        '<!-- <meta name="robots" content="noai"> -->'
        '<script>var s = "<meta name=robots content=noai>";</script>'
        '<img alt="<meta name=robots content=noai>">'
    )
    assert states(htmlmeta.signals(hidden), "html-meta-robots") == [("allowed", "*")]
    shown = page('<META NAME=Robots CONTENT="noai" /><meta content="x" name="other">')
    assert states(htmlmeta.signals(shown), "html-meta-robots") == [("reserved", "*")]
    assert htmlmeta.metas(page('<meta name="a" content="&lt;b&gt;">'))[0][:2] == ("a", "<b>")


def test_meta_size_cap_and_hostile_pages_are_fast() -> None:
    late = (
        b"<html><head>" + b"<!-- pad -->" * 200_000 + b'<meta name="robots" content="noai"></head>'
    )
    start = time.perf_counter()
    assert states(htmlmeta.signals(late), "html-meta-robots") == [
        ("allowed", "*")
    ]  # past the 1 MiB cap
    htmlmeta.signals(b"<" * 2_000_000)
    htmlmeta.signals(b"<meta " + b"a=b " * 300_000)
    htmlmeta.signals(b"<a" * 500_000)  # quadratic in the stdlib html.parser
    htmlmeta.signals(b'<a "' * 250_000)
    assert time.perf_counter() - start < 5.0


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_htmlmeta_never_raises(body: bytes) -> None:
    assert htmlmeta.signals(b"<meta name='robots' content='noai'>" + body, DEFAULT_AGENTS)
