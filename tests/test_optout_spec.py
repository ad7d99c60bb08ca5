"""Opt-out parsers checked against the specifications' own sentences and examples.

Each test quotes the text it checks. Sources: RFC 9309 (robots.txt); draft-canel-robots-ai-control
(DisallowAITraining); IETF AIPREF vocabulary + attachment drafts with RFC 9651 structured fields;
W3C TDMRep CG final report and its HTML technique; IPTC Photo Metadata 2023.1 with the PLUS
DataMining vocabulary; C2PA 1.4 `c2pa.training-mining` and CAWG training-and-data-mining 1.0/1.1.
"""

from __future__ import annotations

import json

import pytest
from test_optout_parsers_embedded import box, cbor, png, superbox, xmp

from audit.optouts import embedded, headers, htmlmeta, robots, tdmrep
from audit.optouts.signals import USES

AI = ("genai_training", "ai_training")
PLUS = "http://ns.useplus.org/ldf/vocab/"


def uses_of(sigs, signal: str, state: str) -> tuple[str, ...]:
    return tuple(u for s in sigs if s.signal == signal and s.state == state for u in s.uses)


# --- RFC 9309 ----------------------------------------------------------------------------------
def test_rfc9309_redirect_limit_means_unavailable():
    """RFC 9309 2.3.1.2: "If there are more than five consecutive redirects, crawlers MAY assume
    that the robots.txt file is unavailable." 2.3.1.3: "If the robots.txt file is unavailable, the
    crawler MAY access any resources on the server." The crawler keeps the last 3xx answer."""
    rf = robots.from_status(301)
    assert rf.mode == "allow_all" and "RFC 9309 2.3.1.2" in rf.note
    sigs = robots.signals(rf, "https://a.example/x.jpg")
    assert [s.state for s in sigs] == ["allowed"]


def test_rfc9309_unreachable_still_disallows_all():
    """RFC 9309 2.3.1.4: "If the robots.txt file is unreachable due to server or network errors,
    this means the robots.txt file is undefined and the crawler MUST assume complete disallow.\""""
    assert robots.from_status(503).mode == "disallow_all"
    assert robots.from_status(0).mode == "disallow_all"


# --- draft-canel-robots-ai-control -------------------------------------------------------------
def test_disallow_ai_training_rules():
    """draft-canel-robots-ai-control: "DisallowAITraining" and "AllowAITraining" rules, inside a
    user-agent group, with the path matching of RFC 9309 ("the most specific match found MUST be
    used"; "If an allow rule and a disallow rule are equivalent, then the allow rule SHOULD be
    used")."""
    body = (
        b"User-agent: *\n"
        b"Allow: /\n"
        b"DisallowAITraining: /photos/\n"
        b"AllowAITraining: /photos/free/\n"
        b"DisallowAITraining: /same\n"
        b"AllowAITraining: /same\n"
    )
    rf = robots.parse(body)
    reserved = robots.signals(rf, "https://a.example/photos/cat.jpg", agents=["GPTBot"])
    assert uses_of(reserved, "robots.txt", "reserved") == AI
    assert "DisallowAITraining: /photos/" in reserved[0].evidence
    free = robots.signals(rf, "https://a.example/photos/free/cat.jpg", agents=["GPTBot"])
    assert uses_of(free, "robots.txt", "reserved") == ()
    tie = robots.signals(rf, "https://a.example/same", agents=["GPTBot"])
    assert uses_of(tie, "robots.txt", "reserved") == ()
    # crawling is allowed throughout: the rule is a usage statement, not a crawl permission
    assert rf.check("GPTBot", "/photos/cat.jpg")[0] is True


def test_disallow_ai_training_is_scoped_to_its_group():
    """RFC 9309 2.2.1: a crawler obeys the group that names it; "*" only when none does."""
    rf = robots.parse(b"User-agent: CCBot\nAllow: /\n\nUser-agent: *\nDisallowAITraining: /\n")
    assert (
        uses_of(
            robots.signals(rf, "https://a.example/x", agents=["CCBot"]), "robots.txt", "reserved"
        )
        == ()
    )
    assert (
        uses_of(
            robots.signals(rf, "https://a.example/x", agents=["GPTBot"]), "robots.txt", "reserved"
        )
        == AI
    )


# --- IETF AIPREF + RFC 9651 --------------------------------------------------------------------
@pytest.mark.parametrize(
    "value,reserved,allowed",
    [
        # vocab: "train-ai" (AI training) and "train-genai" (generative AI training, a subset)
        ("train-ai=n", AI, ()),
        ("train-genai=n", ("genai_training",), ()),
        # RFC 9651 3.2: keys are lcalpha-led; "Train-AI" fails to parse, and 4.2: "If parsing
        # fails ... the entire field value MUST be ignored": no preference at all
        ("Train-AI=n", (), ()),
        ("train-ai=n, search=", (), ()),
        # tokens are case-sensitive: "N" is not the token "n"; a String "n" is not a Token
        ("train-ai=N", (), ()),
        ('train-ai="n"', (), ()),
        # RFC 9651 4.2.2: on a duplicate key, the last value wins ("overwrite")
        ("train-ai=n, train-ai=y", (), AI),
        ("train-ai=y, train-ai=n", AI, ()),
        # parameters do not change the value
        ("train-ai=n;reason=x", AI, ()),
        # search and ai-use are their own uses
        ("search=n, ai-use=n", ("search_indexing", "ai_inference"), ()),
        # a use without its own preference takes the nearest parent's
        ("all=n, train-ai=y", ("data_mining", "search_indexing", "ai_inference"), AI),
    ],
)
def test_content_usage_is_an_rfc9651_dictionary(value, reserved, allowed):
    """draft-ietf-aipref-attach: "The Content-Usage field is a Dictionary Structured Field"."""
    sigs = headers.signals([("Content-Usage", value)])
    assert uses_of(sigs, "content-usage", "reserved") == reserved
    assert uses_of(sigs, "content-usage", "allowed") == allowed


def test_content_usage_field_lines_are_combined():
    """RFC 9651 4.2: "parsers MUST combine all field lines in the same section that have the same
    name into one comma-separated field-value" - a later line's duplicate key wins, and a line
    that does not parse voids the whole field."""
    two = headers.signals([("Content-Usage", "train-ai=n"), ("content-usage", "train-ai=y")])
    assert uses_of(two, "content-usage", "allowed") == AI
    assert uses_of(two, "content-usage", "reserved") == ()
    bad = headers.signals([("Content-Usage", "train-ai=n"), ("Content-Usage", "Bad=n")])
    assert [s for s in bad if s.signal == "content-usage"] == []


def test_content_usage_in_robots_follows_longest_match():
    """draft-ietf-aipref-attach 3, its example: "Of those resources, those under "/ai-ok/" have an
    associated usage preference of "train-ai=y" and all other resources have a usage preference of
    "train-ai=n"", and "/never/test" (disallowed) has no usage preference; ExampleBot uses its own
    group."""
    rf = robots.parse(
        b"User-Agent: *\nAllow: /\nDisallow: /never/\nContent-Usage: / train-ai=n\n"
        b"Content-Usage: /ai-ok/ train-ai=y\n\n"
        b"User-Agent: ExampleBot\nAllow: /\nContent-Usage: / train-ai=y\n"
    )

    def at(p, agent="GPTBot"):
        return robots.signals(rf, "https://a.example" + p, agents=[agent])

    assert uses_of(at("/test"), "content-usage", "reserved") == AI
    assert uses_of(at("/ai-ok/test"), "content-usage", "allowed") == AI
    assert uses_of(at("/ai-ok/test"), "content-usage", "reserved") == ()
    assert [s for s in at("/never/test") if s.signal == "content-usage"] == []
    assert uses_of(at("/test", "ExampleBot"), "content-usage", "allowed") == AI


def test_content_usage_in_robots_identical_paths_and_malformed_rules():
    """attach draft 3.1: "If there are Content-Usage rules that have identical paths and
    conflicting usage preferences, these preferences apply separately" (the most restrictive
    wins); 3.2: the rule value's path "always starts with "/"" - a rule without one is ignored."""
    rf = robots.parse(
        b"User-agent: *\nAllow: /\nContent-Usage: /x/ train-ai=y\nContent-Usage: /x/ train-ai=n\n"
        b"Content-Usage: train-ai=n\n"
    )
    sigs = robots.signals(rf, "https://a.example/x/1.jpg", agents=["GPTBot"])
    assert uses_of(sigs, "content-usage", "reserved") == AI
    other = robots.signals(rf, "https://a.example/y.jpg", agents=["GPTBot"])
    assert [s for s in other if s.signal == "content-usage"] == []


def test_vocab_processing_examples():
    """draft-ietf-aipref-vocab 6.4: "the following expresses no preferences: train-ai=y,
    train-ai="n", train-genai=n, train-genai, all=n, all=()", and "train-ai;allow=n,
    train-ai=y" carries "a preference to allow the usage"."""
    none = headers.content_usage(
        'train-ai=y, train-ai="n", train-genai=n, train-genai, all=n, all=()'
    )
    assert none == {}
    assert headers.content_usage("train-ai;allow=n, train-ai=y") == {"train-ai": "y"}
    assert headers.content_usage('train-ai=y, train-ai, search=n, search="n"') == {}


# --- robots meta / X-Robots-Tag search directives ---------------------------------------------
@pytest.mark.parametrize("directive", ["noindex", "noimageindex", "none"])
def test_search_directives_are_their_own_use(directive):
    """noindex / noimageindex / none say "do not list me in search": reported as search_indexing,
    not as a training reservation (unless the index policy asks for it)."""
    sigs = headers.signals([("X-Robots-Tag", directive)])
    assert uses_of(sigs, "x-robots-tag", "reserved") == ("search_indexing",)
    page = f'<meta name="robots" content="{directive}">'.encode()
    assert uses_of(htmlmeta.signals(page), "html-meta-robots", "reserved") == ("search_indexing",)


# --- W3C TDMRep ---------------------------------------------------------------------------------
def test_tdmrep_most_common_file_reserves_the_whole_site():
    """TDMRep: the match is a prefix ("The match evaluates positively if and only if the end of
    the path from the rule is reached before a difference in octets is encountered"), so
    `[{"location": "/", "tdm-reservation": 1}]` covers every file of the origin."""
    f = tdmrep.parse(b'[{"location": "/", "tdm-reservation": 1}]')
    for url in (
        "https://p.example/",
        "https://p.example/images/a/b.jpg",
        "https://p.example/x?y=1",
    ):
        assert uses_of(f.signals(url), "tdmrep.json", "reserved") == USES


def test_tdmrep_first_rule_in_order_wins():
    """TDMRep: "The most specific match found MUST be used. The most specific match is the first
    in sequence.\""""
    body = json.dumps(
        [
            {"location": "/images/public/", "tdm-reservation": 0},
            {"location": "/images/*.jpg$", "tdm-reservation": 1},
        ]
    ).encode()
    f = tdmrep.parse(body)
    assert f.signals("https://p.example/images/public/a.jpg")[0].state == "allowed"
    assert f.signals("https://p.example/images/deep/a.jpg")[0].state == "reserved"
    assert f.signals("https://p.example/images/deep/a.jpg.html")[0].state == "allowed"
    # the location matches "the path of a set of files": a query string does not defeat "$"
    assert f.signals("https://p.example/images/deep/a.jpg?w=200")[0].state == "reserved"


def test_tdmrep_final_report_examples():
    """TDMRep examples: `[{"location": "/", "tdm-reservation": 1}]` opts out "for every file
    present on a Web server"; and three groups: /directory-a/ reserved, /directory-b/html/
    reserved with a policy, "TDM rights are not reserved for all JPEG images" in
    /directory-b/images/*.jpg. "If no match is found, a TDM Agent MUST consider that
    `tdm-reservation` is unset for the given URL.\""""
    groups = tdmrep.parse(
        json.dumps(
            [
                {"location": "/directory-a/", "tdm-reservation": 1},
                {
                    "location": "/directory-b/html/",
                    "tdm-reservation": 1,
                    "tdm-policy": "https://provider.com/policies/policy.json",
                },
                {"location": "/directory-b/images/*.jpg", "tdm-reservation": 0},
            ]
        ).encode()
    )
    at = lambda p: groups.signals("https://provider.com" + p)[0]  # noqa: E731
    assert at("/directory-a/report.pdf").state == "reserved"
    html = at("/directory-b/html/page.html")
    assert html.state == "reserved" and "policies/policy.json" in html.evidence
    assert at("/directory-b/images/cat.jpg").state == "allowed"
    assert at("/directory-b/images/cat.png").state == "allowed"  # no match: unset
    assert "no location matches" in at("/elsewhere.jpg").evidence


@pytest.mark.parametrize("value", ["2", "yes", "", "1.0"])
def test_tdm_reservation_protocol_errors_are_unset(value):
    """TDMRep: "Other values are considered protocol errors. In such a case the TDM Agents MUST
    consider that the value of TDM-a is unset" - no signal, from the header or the meta."""
    assert [
        s for s in headers.signals([("tdm-reservation", value)]) if s.signal == "tdm-header"
    ] == []
    page = f'<meta name="tdm-reservation" content="{value}">'.encode()
    assert [s for s in htmlmeta.signals(page) if s.signal == "tdm-meta"] == []
    for bad in (value, "1", True):  # "`tdm-reservation` is an integer"
        f = tdmrep.parse(json.dumps([{"location": "/", "tdm-reservation": bad}]).encode())
        assert f.skipped == 1 and f.signals("https://p.example/a")[0].state == "allowed"


@pytest.mark.parametrize(
    "body", [b'{"location": "/", "tdm-reservation": 1}', b'[{"location": "/"', b"<html>"]
)
def test_tdmrep_file_not_an_array_means_not_implemented(body):
    """TDMRep: "Failure to provide access to such a representation implies that the origin
    server does not implement this protocol": no reservation, and not "unchecked"."""
    sigs = tdmrep.parse(body).signals("https://p.example/a.jpg")
    assert [s.state for s in sigs] == ["allowed"]


# --- IPTC 2023.1 / PLUS DataMining --------------------------------------------------------------
def constrained_xmp(code: str, extra: str) -> bytes:
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:plus="http://ns.useplus.org/ldf/xmp/1.0/" '
        'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">'
        f"<plus:DataMining>{PLUS}{code}</plus:DataMining>{extra}"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    ).encode()


def test_plus_prohibited_see_constraint_quotes_the_constraint():
    """PLUS DataMining: "DMI-PROHIBITED-SEECONSTRAINT: Prohibited except as permitted in the
    Other Constraints (plus:OtherConstraints) property" - reserved, with the text as evidence."""
    extra = (
        "<plus:OtherConstraints><rdf:Alt><rdf:li xml:lang='x-default'>Mining only for research"
        "</rdf:li></rdf:Alt></plus:OtherConstraints>"
    )
    packet = constrained_xmp("DMI-PROHIBITED-SEECONSTRAINT", extra)
    sigs = embedded.xmp_signals(packet)
    assert uses_of(sigs, "iptc-xmp", "reserved") == USES
    assert "Mining only for research" in sigs[0].evidence


def test_plus_prohibited_see_linked_rights_expression():
    """IPTC 2023.1 "Linked Encoded Rights Expression" (Iptc4xmpExt:LinkedEncRightsExpr) is what
    DMI-PROHIBITED-SEELINKEDRIGHTSEXPR points to: reserved, the link quoted."""
    extra = (
        "<Iptc4xmpExt:LinkedEncRightsExpr><rdf:Bag><rdf:li rdf:parseType='Resource'>"
        "<Iptc4xmpExt:LinkedRightsExpr>https://p.example/odrl.json</Iptc4xmpExt:LinkedRightsExpr>"
        "</rdf:li></rdf:Bag></Iptc4xmpExt:LinkedEncRightsExpr>"
    )
    sigs = embedded.xmp_signals(constrained_xmp("DMI-PROHIBITED-SEELINKEDRIGHTSEXPR", extra))
    assert (
        uses_of(sigs, "iptc-xmp", "reserved") == USES
        and "https://p.example/odrl.json" in sigs[0].evidence
    )


@pytest.mark.parametrize(
    "code,reserved",
    [
        ("DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING", USES),  # search indexing stays allowed
        ("DMI-PROHIBITED", (*USES, "search_indexing")),
        ("DMI-PROHIBITED-AIMLTRAINING", AI),
        ("DMI-PROHIBITED-GENAIMLTRAINING", ("genai_training",)),
        ("DMI-PROHIBITED-SEEEMBEDDEDRIGHTSEXPR", USES),
    ],
)
def test_plus_values(code, reserved):
    assert (
        uses_of(
            embedded.signals(
                png((b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp(PLUS + code)))
            ),
            "iptc-xmp",
            "reserved",
        )
        == reserved
    )


# --- C2PA 1.4 / CAWG ----------------------------------------------------------------------------
def c2pa_png(content: dict, label: str = "c2pa.training-mining") -> bytes:
    assertions = superbox("c2pa.assertions", superbox(label, box(b"cbor", cbor(content))))
    store = superbox(
        "c2pa", superbox("urn:uuid:m", assertions, superbox("c2pa.claim", box(b"cbor", cbor({}))))
    )
    return png((b"caBX", store))


def test_c2pa_ai_training_does_not_imply_generative_training():
    """C2PA 1.4 training-mining entries c2pa.ai_generative_training, c2pa.ai_training,
    c2pa.data_mining, c2pa.ai_inference are separate permissions: each key stands alone."""
    sigs = embedded.signals(c2pa_png({"entries": {"c2pa.ai_training": {"use": "notAllowed"}}}))
    assert uses_of(sigs, "c2pa", "reserved") == ("ai_training",)
    sigs = embedded.signals(
        c2pa_png(
            {
                "entries": {
                    "c2pa.ai_generative_training": {"use": "notAllowed"},
                    "c2pa.ai_training": {"use": "allowed"},
                }
            }
        )
    )
    assert uses_of(sigs, "c2pa", "reserved") == ("genai_training",)
    assert uses_of(sigs, "c2pa", "allowed") == ("ai_training",)


def test_cawg_10_form_without_entries():
    """CAWG 1.1: "A previous version of this specification inadvertently omitted the `entries` map
    from the CDDL definition" - the 1.0 form has the entries at the top level. "In the absence of
    additional information, `constrained` shall be treated as equivalent to `notAllowed`." """
    content = {
        "cawg.ai_generative_training": {"use": "notAllowed"},
        "cawg.data_mining": {"use": "constrained", "constraints_info": "ask us"},
    }
    sigs = embedded.signals(c2pa_png(content, "cawg.training-mining"))
    assert uses_of(sigs, "c2pa", "reserved") == ("genai_training", "data_mining")
    assert "ask us" in [s for s in sigs if s.signal == "c2pa"][0].evidence


def test_cawg_11_entries_and_inference():
    content = {"entries": {"cawg.ai_inference": {"use": "notAllowed"}}}
    sigs = embedded.signals(c2pa_png(content, "cawg.training-mining"))
    assert uses_of(sigs, "c2pa", "reserved") == ("ai_inference",)


def test_unknown_custom_keys_are_no_signal_but_reported():
    """CAWG 1.1 allows custom entry keys; we know no meaning for them: no reservation, keys quoted."""
    sigs = embedded.signals(c2pa_png({"entries": {"com.example.robots": {"use": "notAllowed"}}}))
    assert uses_of(sigs, "c2pa", "reserved") == ()
    assert [s.state for s in sigs if s.signal == "c2pa"] == ["allowed"]
    c2pa = [s for s in sigs if s.signal == "c2pa"]
    assert "custom keys, no signal: com.example.robots" in c2pa[0].evidence


def test_c2pa_14_example_assertion():
    """The C2PA 1.4 training-mining example: generative training, inference and training
    notAllowed, data mining constrained "may only be mined on days whose names end in 'y'"."""
    content = {
        "entries": {
            "c2pa.ai_generative_training": {"use": "notAllowed"},
            "c2pa.ai_inference": {"use": "notAllowed"},
            "c2pa.ai_training": {"use": "notAllowed"},
            "c2pa.data_mining": {
                "use": "constrained",
                "constraint_info": "may only be mined on days whose names end in 'y'",
            },
        }
    }
    sigs = [s for s in embedded.signals(c2pa_png(content)) if s.signal == "c2pa"]
    assert uses_of(sigs, "c2pa", "reserved") == (*USES, "ai_inference")
    assert "days whose names end in 'y'" in sigs[0].evidence
    assert "signature not verified" in sigs[0].location


def test_disallow_ai_training_as_a_robots_directive():
    """draft-canel-robots-ai-control also carries the rule as a robots meta / X-Robots-Tag value."""
    sigs = headers.signals([("X-Robots-Tag", "DisallowAITraining")])
    assert uses_of(sigs, "x-robots-tag", "reserved") == AI
    page = b'<meta name="robots" content="DisallowAITraining">'
    assert uses_of(htmlmeta.signals(page), "html-meta-robots", "reserved") == AI
