"""W3C TDMRep /.well-known/tdmrep.json: locations, first match, statuses, and header-over-file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.optouts import headers, tdmrep
from audit.optouts.signals import USES

SPEC = (Path(__file__).parent / "data" / "optout" / "tdmrep_spec_example.json").read_bytes()


# TDMRep: "The most specific match found MUST be used. The most specific match is the first in
# sequence." and "The match evaluates positively if and only if the end of the path from the rule
# is reached before a difference in octets is encountered" (a prefix match, as in robots.txt).
@pytest.mark.parametrize(
    "url,state,entry",
    [
        ("https://provider.com/", "reserved", "entry 0"),
        # "/" comes first and is a prefix of every path: it decides for the whole site
        ("https://provider.com/images/public/a.jpg", "reserved", "entry 0"),
        ("https://provider.com/about.html", "reserved", "entry 0"),
        ("https://provider.com/%69mages/a.jpg", "reserved", "entry 0"),
    ],
)
def test_spec_example(url: str, state: str, entry: str) -> None:
    sigs = tdmrep.parse(SPEC).signals(url)
    assert [s.state for s in sigs] == [state] and sigs[0].evidence.startswith(entry)
    assert sigs[0].location == "https://provider.com/.well-known/tdmrep.json"
    if state == "reserved":
        assert sigs[0].uses == USES and "tdm-policy" in sigs[0].evidence


def test_first_match_in_file_order_then_prefixes() -> None:
    rules = [
        {"location": "/images/public/*", "tdm-reservation": 0},
        {"location": "/images/", "tdm-reservation": 1},
        {"location": "/", "tdm-reservation": 0},
    ]
    f = tdmrep.parse(json.dumps(rules).encode())
    assert f.match("https://p.example/images/public/a.jpg").index == 0
    assert (
        f.match("https://p.example/images/deep/er/a.jpg?w=1").index == 1
    )  # "/dir/" covers files under it
    assert f.match("https://p.example/%69mages/a.jpg").index == 1  # percent-encoding normalised
    assert f.match("https://p.example/about.html").index == 2


def test_wildcards_and_end_anchor() -> None:
    f = tdmrep.parse(json.dumps([{"location": "/*/photos/*.jpg$", "tdm-reservation": 1}]).encode())
    assert f.match("https://a.example/u/photos/x.jpg") is not None
    assert f.match("https://a.example/u/photos/x.jpg.html") is None  # "$" ends the match
    prefix = tdmrep.parse(b'[{"location": "/a.jpg", "tdm-reservation": 1}]')
    assert prefix.match("https://a.example/a.jpg") and prefix.match("https://a.example/a.jpgx")
    exact = tdmrep.parse(b'[{"location": "/a.jpg$", "tdm-reservation": 1}]')
    assert exact.match("https://a.example/a.jpg") and not exact.match("https://a.example/a.jpgx")


def test_invalid_entries_are_skipped_and_counted() -> None:
    # "Other values are considered protocol errors. In such a case the TDM Agents MUST consider
    # that the value ... is unset."
    body = json.dumps(
        [
            {"location": "/x/", "tdm-reservation": 2},
            "junk",
            {"tdm-reservation": 1},
            {"location": "/x/", "tdm-reservation": "1"},  # "an integer": a string is an error
            {"location": "/x/", "tdm-reservation": True},
            {"location": "/x/", "tdm-reservation": 1},
        ]
    ).encode()
    f = tdmrep.parse(body)
    assert f.skipped == 5 and [e.index for e in f.entries] == [5]


# "Failure to provide access to such a representation implies that the origin server does not
# implement this protocol": no reservation from the file, never "unchecked".
@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2",
        b"\xff\xfe",
        b"42",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"location": "/*", "tdm-reservation": 1}',
    ],
)
def test_unreadable_file_means_protocol_not_implemented(body: bytes) -> None:
    sigs = tdmrep.parse(body).signals("https://a.example/x.jpg")
    assert [s.state for s in sigs] == ["allowed"] and "not implemented" in sigs[0].evidence


def test_statuses_and_bad_urls() -> None:
    url = "https://a.example/x.jpg"
    assert [s.state for s in tdmrep.from_status(404).signals(url)] == ["allowed"]
    assert [s.state for s in tdmrep.from_status(503).signals(url)] == ["unchecked"]
    assert [s.state for s in tdmrep.from_status(None).signals(url)] == ["unchecked"]
    assert [
        s.state for s in tdmrep.from_status(200, SPEC).signals("https://provider.com/images/a.jpg")
    ] == ["reserved"]
    assert [s.state for s in tdmrep.parse(SPEC).signals("not a url")] == ["not_evaluable"]


def test_header_overrides_file() -> None:
    file_sigs = tdmrep.parse(SPEC).signals("https://provider.com/images/a.jpg")  # reserved
    head = [s for s in headers.signals([("tdm-reservation", "0")]) if s.signal == "tdm-header"]
    assert [(s.signal, s.state) for s in tdmrep.combine(file_sigs, head)] == [
        ("tdm-header", "allowed")
    ]
    bad = [s for s in headers.signals([("tdm-reservation", "maybe")]) if s.signal == "tdm-header"]
    assert bad == [] and [s.signal for s in tdmrep.combine(file_sigs, bad)] == ["tdmrep.json"]
    assert [s.signal for s in tdmrep.combine(file_sigs, [])] == ["tdmrep.json"]


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200), st.text(max_size=30))
def test_never_raises(body: bytes, path: str) -> None:
    tdmrep.parse(body).signals("https://a.example/" + path)
    pattern = json.dumps([{"location": "/" + path, "tdm-reservation": 1}]).encode()
    tdmrep.parse(pattern).signals("https://a.example/" + path)
