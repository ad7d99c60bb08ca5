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


@pytest.mark.parametrize(
    "url,state,entry",
    [
        ("https://provider.com/", "reserved", "entry 0"),  # "/" is the home page only, not a prefix
        (
            "https://provider.com/images/public/a.jpg",
            "allowed",
            "entry 1",
        ),  # the FIRST match decides
        ("https://provider.com/images/a.jpg", "reserved", "entry 2"),
        (
            "https://provider.com/images/deep/er/a.jpg?w=1",
            "reserved",
            "entry 2",
        ),  # "*" spans "/"; query ignored
        ("https://provider.com/about.html", "allowed", "no location matches"),
        (
            "https://provider.com/%69mages/a.jpg",
            "reserved",
            "entry 2",
        ),  # percent-encoding normalised
    ],
)
def test_spec_example(url: str, state: str, entry: str) -> None:
    sigs = tdmrep.parse(SPEC).signals(url)
    assert [s.state for s in sigs] == [state] and sigs[0].evidence.startswith(entry)
    assert sigs[0].location == "https://provider.com/.well-known/tdmrep.json"
    if state == "reserved":
        assert sigs[0].uses == USES and "tdm-policy" in sigs[0].evidence


def test_wildcards_in_the_middle_and_exact_paths() -> None:
    f = tdmrep.parse(json.dumps([{"location": "/*/photos/*.jpg", "tdm-reservation": 1}]).encode())
    assert f.match("https://a.example/u/photos/x.jpg") is not None
    assert f.match("https://a.example/u/photos/x.jpg.html") is None  # whole-path match, not prefix
    assert f.match("https://a.example/photos/x.jpg") is None
    exact = tdmrep.parse(b'[{"location": "/a.jpg", "tdm-reservation": 1}]')
    assert exact.match("https://a.example/a.jpg") and not exact.match("https://a.example/a.jpgx")


def test_invalid_entries_are_skipped_and_counted() -> None:
    body = json.dumps(
        [
            {"location": "/x/*", "tdm-reservation": 2},
            "junk",
            {"tdm-reservation": 1},
            {"location": "/x/*", "tdm-reservation": "1"},
        ]
    ).encode()
    f = tdmrep.parse(body)
    assert f.skipped == 3 and [e.index for e in f.entries] == [3]
    assert tdmrep.parse(b'{"location": "/*", "tdm-reservation": 1}').match(
        "https://a.example/z"
    )  # lone object


@pytest.mark.parametrize(
    "body", [b"not json", b"[1, 2", b"\xff\xfe", b"42", b"[" * 100_000 + b"]" * 100_000]
)
def test_unreadable_file_is_unchecked_never_allowed(body: bytes) -> None:
    assert [s.state for s in tdmrep.parse(body).signals("https://a.example/x.jpg")] == ["unchecked"]


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
    assert {s.signal for s in tdmrep.combine(file_sigs, bad)} == {
        "tdmrep.json",
        "tdm-header",
    }  # no override
    assert [s.signal for s in tdmrep.combine(file_sigs, [])] == ["tdmrep.json"]


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200), st.text(max_size=30))
def test_never_raises(body: bytes, path: str) -> None:
    tdmrep.parse(body).signals("https://a.example/" + path)
    pattern = json.dumps([{"location": "/" + path, "tdm-reservation": 1}]).encode()
    tdmrep.parse(pattern).signals("https://a.example/" + path)
