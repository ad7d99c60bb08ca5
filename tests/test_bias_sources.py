"""Domains (public-suffix aware), ccTLD -> country, concentration and language identification."""

from __future__ import annotations

import numpy as np
import pytest

from audit.checks.bias import language, sources


@pytest.mark.parametrize(
    "url, host, domain",
    [
        ("https://a.b.example.co.uk/x.jpg", "a.b.example.co.uk", "example.co.uk"),
        ("HTTPS://WWW.Example.COM./a.png", "www.example.com", "example.com"),
        ("http://img.example.com:8080/a?b=c#d", "img.example.com", "example.com"),
        (
            "https://alice.github.io/cat.png",
            "alice.github.io",
            "alice.github.io",
        ),  # private suffix section
        ("http://192.168.0.1/a.png", "192.168.0.1", "192.168.0.1"),
        ("http://[2001:db8::1]/a.png", "2001:db8::1", "2001:db8::1"),
        ("https://co.uk/a", "co.uk", "co.uk"),  # a bare public suffix is its own domain
    ],
)
def test_hosts_and_registrable_domains(url, host, domain):
    assert sources.host(url) == host
    assert sources.registrable_domain(host) == domain


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        "not a url",
        "example.com/a.png",
        "http://exa mple.com/",
        "http://[::1",
        "file:///tmp/a.png",
        "javascript:alert(1)",
        42,
    ],
)
def test_malformed_urls_have_no_host(url):
    assert sources.host(url) is None


def test_tld_to_country():
    assert sources.country(sources.tld("a.example.co.uk")) == ("United Kingdom", "")
    assert sources.country("de")[0] == "Germany"
    assert sources.country("io")[1] == "generic-use"
    assert sources.country("com")[0].startswith("generic")
    assert sources.tld("10.0.0.1") == "(ip)" and sources.country("(ip)")[0] == "IP address"


def test_source_counter_concentration():
    c = sources.SourceCounter()
    urls = (
        [f"https://img{i % 3}.example.de/{i}" for i in range(30)]
        + ["https://x.org/1"] * 10
        + ["nonsense"]
    )
    c.add(urls, ["cc-by"] * 20 + [None] * 21)
    r = c.result(200, np.random.default_rng(0))
    assert (r["rows"], r["malformed_urls"], r["hosts"], r["domains"]) == (41, 1, 4, 2)
    assert r["top_domains"][0]["domain"] == "example.de" and r["top_domains"][0]["rows"] == 30
    conc = r["concentration"]
    assert conc["top1_share"]["value"] == pytest.approx(0.75)
    assert conc["gini"]["value"] == pytest.approx(0.25)  # counts (10, 30)
    lo, hi = conc["gini"]["ci95"]
    assert lo <= 0.25 <= hi
    assert {x["country"]: x["rows"] for x in r["countries"]}["Germany"] == 30
    assert {x["license"]: x["rows"] for x in r["licenses"]} == {"cc-by": 20, "(none)": 21}

    even = sources.SourceCounter()
    even.add([f"https://site{i % 5}.com/{i}" for i in range(50)])
    assert even.result(50, np.random.default_rng(0))["concentration"]["gini"][
        "value"
    ] == pytest.approx(0.0)


@pytest.mark.parametrize(
    "text, lang",
    [
        ("The quick brown fox jumps over the lazy dog near the river bank.", "en"),
        ("Le chat noir dort tranquillement sur le canapé du salon.", "fr"),
        ("Der schwarze Hund schläft ruhig auf dem Sofa im Wohnzimmer.", "de"),
        ("El perro negro duerme tranquilamente en el sofá de la casa.", "es"),
    ],
)
def test_language_identification(text, lang):
    assert language.identify(text) == lang


def test_language_agreement_with_declared_column():
    assert language.normalise_code("EN-us") == "en" and language.normalise_code(" ") is None
    c = language.LanguageCounter(total_rows=4)
    c.add(
        [
            "The quick brown fox jumps over the lazy dog.",
            "Le chat noir dort sur le canapé du salon.",
            "Der schwarze Hund schläft auf dem Sofa.",
            None,
        ],
        ["en", "en_GB", "de", "en"],
    )
    r = c.result(100, np.random.default_rng(0))
    assert r["captions_identified"] == 3
    assert r["agreement"]["compared"] == 3 and r["agreement"]["agree"] == 2
    assert r["disagreements"] == [{"declared": "en", "detected": "fr", "captions": 1}]


def test_language_sampling_stride():
    c = language.LanguageCounter(total_rows=10, max_rows=5)
    c.add(["one two three"] * 6)
    c.add(["one two three"] * 4)
    assert c.stride == 2 and c.result(0, np.random.default_rng(0))["captions_identified"] == 5
