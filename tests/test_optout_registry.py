"""Registries: formats, subdomain matching, URL normalisation, unreadable files, SQL == Python keys."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.optouts import registry


def hits(
    reg: registry.Registry, urls: list[str | None], pages: list[str | None] | None = None
) -> dict[int, list]:
    con = registry.connect_rules([reg])
    rows = pa.table(
        {
            "row_id": pa.array(range(len(urls)), pa.int64()),
            "url": pa.array(urls, pa.string()),
            "page_url": pa.array(pages or [None] * len(urls), pa.string()),
        }
    )
    out: dict[int, list] = {}
    for h in registry.match(con, rows):
        out.setdefault(h["row_id"], []).append(h)
    return out


def test_text_registry_comments_bom_and_line_endings(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(
        b"\xef\xbb\xbf# do not train\r\nExample.COM\r\n\r\n*.cdn.example.org  # inline comment\r"
        b"https://x.example.net/a.png data_mining\nnot a valid domain!\nfoo.example bogus_use\n"
    )
    reg = registry.load(path)
    assert reg.error is None
    assert [d[0] for d in reg.domains] == ["example.com", "cdn.example.org"]
    assert reg.urls == [("x.example.net/a.png", "data_mining", f"{path} line 5")]
    assert (
        reg.skipped == 2
    )  # "bogus_use" and "a" (second word of "not a valid domain!") are not uses
    assert reg.domains[0][2] == f"{path} line 2"


def test_domain_rules_match_subdomains_only_label_wise(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("example.com\nbücher.example\n")
    found = hits(
        registry.load(path),
        [
            "https://example.com/a.png",  # 0 the domain itself
            "https://img.cdn.Example.COM./a.png",  # 1 subdomain, case, trailing dot
            "https://badexample.com/a.png",  # 2 not a subdomain
            "https://example.com.evil.org/a.png",  # 3 suffix trick
            "https://xn--bcher-kva.example/b.jpg",  # 4 IDNA form of the rule
            "http://user@a.example.com:8080/x",  # 5 user info and port
            "not a url",  # 6
            None,  # 7
        ],
    )
    assert sorted(found) == [0, 1, 4, 5]
    assert (
        found[1][0]["evidence"] == "domain rule example.com matches host img.cdn.example.com of url"
    )
    assert found[4][0]["location"].endswith("d.txt line 2")


def test_url_rules_normalise_and_ignore_scheme(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text(
        "URL,use\nhttps://a.example.org/x/~y.png,ai_training\nb.example.org/q?id=1,data_mining\n"
    )
    reg = registry.load(path)
    assert [u[0] for u in reg.urls] == ["a.example.org/x/~y.png", "b.example.org/q?id=1"]
    found = hits(
        reg,
        [
            "HTTPS://A.Example.ORG:443/x/%7Ey.png#frag",  # 0 case, default port, %7E, fragment
            "http://a.example.org/x/./z/../~y.png",  # 1 other scheme, dot segments
            "https://a.example.org/x/~Y.png",  # 2 path case matters
            "https://b.example.org/q?id=1",  # 3 query kept
            "https://b.example.org/q?id=2",  # 4
            "https://a.example.org:8443/x/~y.png",  # 5 another port is another resource
        ],
    )
    assert sorted(found) == [0, 1, 3]
    assert found[3][0]["use"] == "data_mining" and found[3][0]["location"].endswith("u.csv row 3")


def test_page_url_is_matched_too(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("blog.example.com\n")
    found = hits(
        registry.load(path),
        ["https://cdn.other.net/1.png", "https://cdn.other.net/2.png"],
        ["https://blog.example.com/post", None],
    )
    assert list(found) == [0] and found[0][0]["column"] == "page_url"


def test_parquet_and_tsv_registries(tmp_path):
    pq.write_table(
        pa.table({"domain": ["example.com", None, "a/b"], "use": ["data_mining", None, None]}),
        tmp_path / "r.parquet",
    )
    reg = registry.load(tmp_path / "r.parquet")
    assert (
        reg.domains == [("example.com", "data_mining", f"{tmp_path / 'r.parquet'} row 1")]
        and reg.skipped == 1
    )
    (tmp_path / "r.tsv").write_text("url\tdomain\nhttps://x.org/a\texample.net\n")
    reg = registry.load(tmp_path / "r.tsv")
    assert [u[0] for u in reg.urls] == ["x.org/a"] and [d[0] for d in reg.domains] == [
        "example.net"
    ]


@pytest.mark.parametrize(
    "name, content",
    [
        ("missing.txt", None),
        ("nocol.csv", b"website,use\nexample.com,ai_training\n"),
        ("empty.txt", b"# nothing here\n\n"),
        ("broken.parquet", b"PAR1 this is not parquet"),
    ],
)
def test_unreadable_registry_is_an_error_not_empty(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    reg = registry.load(path)
    assert reg.error and str(path) in reg.error
    assert reg.domains == [] and reg.urls == []
    assert reg.unreadable_signal == "registry-url"


def test_unreadable_signal_name_follows_file_name(tmp_path):
    assert registry.load(tmp_path / "my-domains.txt").unreadable_signal == "registry-domain"


_label = st.text(alphabet="abcXYZ019-", min_size=1, max_size=8).filter(
    lambda s: s[0] != "-" and s[-1] != "-"
)
_path = st.text(alphabet="aZ09-._~!$&'()*+,;=:@/%? #é", max_size=20)


_CON: list = []  # one duckdb connection for all examples


@settings(max_examples=150, deadline=None)
@given(
    scheme=st.sampled_from(["http", "HTTPS", "ftp"]),
    labels=st.lists(_label, min_size=1, max_size=4),
    port=st.sampled_from(["", ":80", ":443", ":8080"]),
    path=_path,
)
def test_sql_url_key_equals_python(scheme, labels, port, path):
    """The SQL fast path and `urls.normalise` give the same key for every URL, odd or plain."""
    url = f"{scheme}://{'.'.join(labels)}{port}/{path}"
    if not _CON:
        _CON.append(registry.connect_rules([]))
    con = _CON[0]
    con.execute(
        "CREATE OR REPLACE TEMP TABLE one AS SELECT 0::BIGINT AS row_id, ?::VARCHAR AS url", [url]
    )
    got = con.execute(registry.keys_sql("url", "one")).fetchall()
    sql = got[0][1] if got else None
    assert sql == registry.url_key(url)


def test_rule_kinds_in_a_table_registry(tmp_path):
    """url (exact), url_prefix, host (that host only), domain (and subdomains), site (the whole
    registrable domain by the Public Suffix List)."""
    path = tmp_path / "kinds.csv"
    path.write_text(
        "url,url_prefix,host,domain,site,use\n"
        "https://x.example/a.png,https://p.example/photos,h.example,d.example,www.s.example.co.uk,\n"
    )
    reg = registry.load(path)
    assert reg.error is None and reg.rules == 5
    urls = [
        "https://x.example/a.png",  # 0 exact
        "https://x.example/a.png.jpg",  # 1 exact rule is not a prefix
        "https://p.example/photos/1.jpg",  # 2 prefix
        "https://p.example/photo.jpg",  # 3 outside the prefix
        "https://h.example/1.jpg",  # 4 host
        "https://sub.h.example/1.jpg",  # 5 a host rule does not cover subdomains
        "https://a.b.d.example/1.jpg",  # 6 domain covers subdomains
        "https://cdn.s.example.co.uk/1.jpg",  # 7 site: same registrable domain
        "https://other.co.uk/1.jpg",  # 8 same public suffix only
    ]
    found = hits(reg, urls)
    assert sorted(found) == [0, 2, 4, 6, 7]
    assert registry.unmatched(reg, set())["unmatched"] == 5
