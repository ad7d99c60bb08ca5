"""URL normalisation: RFC 3986 section 6 equivalences, idempotence, and never raising."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.optouts import urls


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("HTTP://Example.COM/", "http://example.com/"),
        ("http://example.com", "http://example.com/"),  # empty path -> "/"
        ("http://example.com:80/a", "http://example.com/a"),  # default port dropped
        ("https://example.com:443/a", "https://example.com/a"),
        ("https://example.com:8443/a", "https://example.com:8443/a"),
        ("http://example.com/%7Euser/%41", "http://example.com/~user/A"),  # unreserved decoded
        (
            "http://example.com/a%2fb",
            "http://example.com/a%2Fb",
        ),  # reserved kept encoded, hex upper-cased
        ("http://example.com/a b/é", "http://example.com/a%20b/%C3%A9"),
        ("http://example.com/a/./b/../c", "http://example.com/a/c"),
        (
            "http://example.com/x?b=%e2%98%83#frag",
            "http://example.com/x?b=%E2%98%83",
        ),  # fragment dropped
        ("http://Bücher.example/", "http://xn--bcher-kva.example/"),  # IDNA
        ("http://example.com./", "http://example.com/"),
        ("http://example.com/100%", "http://example.com/100%25"),
    ],
)
def test_normalise(raw: str, expected: str) -> None:
    assert urls.normalise(raw) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "example.com/x",
        "/relative/path",
        "http://",
        "http://exa mple.com/",
        "http://a.com:99999/",
        "http://a.com:port/",
        "http://[::1/",
        "mailto:someone@example.com",
        "http://a\x00b.com/",
        None,
        42,
        "http://" + "a" * 64 + ".com/",
    ],
)
def test_malformed_urls_give_none(bad: object) -> None:
    assert urls.normalise(bad) is None  # type: ignore[arg-type]
    assert urls.host(bad) is None  # type: ignore[arg-type]
    assert urls.path_and_query(bad) is None  # type: ignore[arg-type]


def test_host_origin_path() -> None:
    url = "HTTPS://User@Img.Example.COM:443/a/b.jpg?w=1#x"
    assert urls.host(url) == "img.example.com"
    assert urls.origin(url) == "https://img.example.com"
    assert urls.path_and_query(url) == "/a/b.jpg?w=1"


@pytest.mark.parametrize(
    "host,domain,expected",
    [
        ("example.com", "example.com", True),
        ("a.example.com", "example.com", True),
        ("A.B.Example.COM.", "example.com", True),
        ("badexample.com", "example.com", False),
        ("example.com", "a.example.com", False),
        ("example.com.evil.net", "example.com", False),
        ("xn--bcher-kva.example", "bücher.example", True),
        ("", "example.com", False),
        (None, "x.com", False),
    ],
)
def test_domain_matches(host: str, domain: str, expected: bool) -> None:
    assert urls.domain_matches(host, domain) is expected


_url_text = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda h, p: f"http://{h}/{p}",
        st.from_regex(r"[a-zA-Z0-9.-]{1,20}", fullmatch=True),
        st.text(max_size=40),
    ),
)


@settings(max_examples=300, deadline=None)
@given(_url_text)
def test_normalise_is_idempotent_and_never_raises(url: str) -> None:
    once = urls.normalise(url)
    urls.host(url), urls.origin(url), urls.path_and_query(url)
    if once is not None:
        assert urls.normalise(once) == once
        assert once.isascii()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_percent_normalisation_is_idempotent(text: str) -> None:
    once = urls.normalise_percent(text)
    assert urls.normalise_percent(once) == once
