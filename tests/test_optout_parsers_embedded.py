"""Embedded signals: PLUS DataMining in XMP (JPEG, PNG, WebP, raw) and C2PA training-mining in JUMBF."""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

import pytest
from conftest import encode, synthetic_image
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.optouts import embedded, jumbf
from audit.optouts.signals import USES

DATA = Path(__file__).parent / "data" / "optout"
AI = ("genai_training", "ai_training")
PLUS = "http://ns.useplus.org/ldf/vocab/"


def xmp(value: str, form: str = "attribute") -> bytes:
    ns = 'xmlns:plus="http://ns.useplus.org/ldf/xmp/1.0/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"'
    if form == "attribute":
        desc = f'<rdf:Description rdf:about="" {ns} plus:DataMining="{value}"/>'
    elif form == "element":
        desc = f'<rdf:Description rdf:about="" {ns}><plus:DataMining>{value}</plus:DataMining></rdf:Description>'
    else:
        desc = f'<rdf:Description rdf:about="" {ns}><plus:DataMining rdf:resource="{value}"/></rdf:Description>'
    return (
        f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        f'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">{desc}</rdf:RDF></x:xmpmeta>'
        '<?xpacket end="w"?>'
    ).encode()


def jpeg(*segments: bytes) -> bytes:
    base = encode(synthetic_image(1, 16), "JPEG")
    return base[:2] + b"".join(segments) + base[2:]


def app(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def png(*chunks: tuple[bytes, bytes]) -> bytes:
    base = encode(synthetic_image(2, 16), "PNG")
    iend = base.rindex(b"IEND") - 4
    extra = b"".join(
        len(d).to_bytes(4, "big") + t + d + zlib.crc32(t + d).to_bytes(4, "big") for t, d in chunks
    )
    return base[:iend] + extra + base[iend:]


def states(sigs, name: str) -> list[tuple[str, tuple[str, ...]]]:
    return [(s.state, s.uses) for s in sigs if s.signal == name]


# --- XMP / PLUS -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code,state,uses",
    [
        ("DMI-UNSPECIFIED", "allowed", USES),
        ("DMI-ALLOWED", "allowed", USES),
        ("DMI-PROHIBITED-AIMLTRAINING", "reserved", AI),
        ("DMI-PROHIBITED-GENAIMLTRAINING", "reserved", ("genai_training",)),
        ("DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING", "reserved", USES),
        ("DMI-PROHIBITED", "reserved", (*USES, "search_indexing")),
        ("DMI-PROHIBITED-SEECONSTRAINT", "reserved", USES),
        ("DMI-PROHIBITED-SEEEMBEDDEDRIGHTSEXPR", "reserved", USES),
        ("DMI-PROHIBITED-SEELINKEDRIGHTSEXPR", "reserved", USES),
        ("DMI-SEE-CONSTRAINT", "not_evaluable", USES),  # not a PLUS value (an old misspelling)
        ("DMI-MAYBE", "not_evaluable", USES),
    ],
)
@pytest.mark.parametrize("form", ["attribute", "element", "resource"])
def test_plus_vocabulary_in_every_form(code: str, state: str, uses: tuple, form: str) -> None:
    sigs = embedded.signals(
        jpeg(app(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + xmp(PLUS + code, form)))
    )
    assert states(sigs, "iptc-xmp") == [(state, uses)]
    assert code in sigs[0].evidence and sigs[0].location == "image bytes (XMP)"


def test_plus_value_case_and_bare_code() -> None:
    sigs = embedded.xmp_signals(xmp("dmi-prohibited-aimltraining", "element"))
    assert states(sigs, "iptc-xmp") == [("reserved", AI)]


def test_pillow_written_jpeg_and_webp_fixture() -> None:
    packet = (DATA / "xmp_plus_prohibited_aiml.xml").read_bytes()
    img = synthetic_image(3, 16)
    for fmt in ("JPEG", "WEBP"):
        data = encode(img, fmt, xmp=packet)
        assert states(embedded.signals(data), "iptc-xmp") == [("reserved", AI)], fmt


def test_png_itxt_plain_and_compressed_and_ztxt() -> None:
    key = b"XML:com.adobe.xmp\x00"
    packet = xmp(PLUS + "DMI-PROHIBITED")
    for chunk in [
        (b"iTXt", key + b"\x00\x00\x00\x00" + packet),
        (b"iTXt", key + b"\x01\x00\x00\x00" + zlib.compress(packet)),
        (b"zTXt", key + b"\x00" + zlib.compress(packet)),
        (b"tEXt", key + packet),
    ]:
        assert states(embedded.signals(png(chunk)), "iptc-xmp") == [
            ("reserved", (*USES, "search_indexing"))
        ], chunk[0]


def test_raw_scan_for_other_containers() -> None:
    gif = (
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00" + xmp(PLUS + "DMI-PROHIBITED-GENAIMLTRAINING") + b";"
    )
    assert states(embedded.signals(gif), "iptc-xmp") == [("reserved", ("genai_training",))]


def test_tdmrep_property_in_xmp() -> None:
    packet = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:tdm="http://www.w3.org/ns/tdmrep/" tdm:reservation="1"/></rdf:RDF></x:xmpmeta>'
    )
    assert states(embedded.xmp_signals(packet), "tdm-meta") == [("reserved", USES)]


def test_hostile_xmp() -> None:
    start = time.perf_counter()
    bomb = embedded.xmp_signals((DATA / "xmp_entity_bomb.xml").read_bytes())
    assert [(s.state, s.evidence.split(" (")[0]) for s in bomb] == [
        ("not_evaluable", "XMP rejected: entities")
    ]
    external = b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x:xmpmeta xmlns:x="adobe:ns:meta/">&e;</x:xmpmeta>'
    assert embedded.xmp_signals(external)[0].state == "not_evaluable"
    assert "unparseable" in embedded.xmp_signals(b"<x:xmpmeta><unclosed")[0].evidence
    zbomb = png(
        (b"iTXt", b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + zlib.compress(b" " * 30_000_000, 9))
    )
    sigs = embedded.signals(zbomb)  # inflated only up to the cap
    assert (
        states(sigs, "iptc-xmp")[0][0] == "not_evaluable" and "XMP packet over" in sigs[0].evidence
    )
    assert time.perf_counter() - start < 5.0


def test_plain_images_and_missing_bytes() -> None:
    for data in (encode(synthetic_image(4, 16), "PNG"), encode(synthetic_image(4, 16), "JPEG")):
        sigs = embedded.signals(data)
        assert [(s.signal, s.state) for s in sigs] == [("iptc-xmp", "allowed"), ("c2pa", "allowed")]
    assert {s.state for s in embedded.signals(None)} == {"not_evaluable"}


# --- CBOR and JUMBF ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "hexdata,value",
    [
        ("00", 0),
        ("17", 23),
        ("1818", 24),
        ("1903e8", 1000),
        ("1b000000e8d4a51000", 1000000000000),
        ("20", -1),
        ("3903e7", -1000),
        ("f93c00", 1.0),
        ("fb3ff199999999999a", 1.1),
        ("f4", False),
        ("f5", True),
        ("f6", None),
        ("6449455446", "IETF"),
        ("4401020304", b"\x01\x02\x03\x04"),
        ("83010203", [1, 2, 3]),
        ("9f018202039f0405ffff", [1, [2, 3], [4, 5]]),
        ("bf6346756ef563416d7421ff", {"Fun": True, "Amt": -2}),
        ("7f657374726561646d696e67ff", "streaming"),
        ("c074323031332d30332d32315432303a30343a30305a", "2013-03-21T20:04:00Z"),
        ("a26161016162820203", {"a": 1, "b": [2, 3]}),
    ],
)
def test_cbor_rfc8949_examples(hexdata: str, value: object) -> None:
    assert jumbf.decode_cbor(bytes.fromhex(hexdata)) == value


@pytest.mark.parametrize(
    "hexdata",
    [
        "",
        "5a7fffffff00",
        "9b7fffffffffffffff",
        "bf61",
        "1c",
        "ff",
        "81" * 200 + "00",
        "5f4101ff" * 0 + "7f6161",
    ],
)
def test_cbor_hostile(hexdata: str) -> None:
    with pytest.raises(jumbf.FormatProblem):
        jumbf.decode_cbor(bytes.fromhex(hexdata))


def cbor(value: object) -> bytes:
    def head(major: int, n: int) -> bytes:
        if n < 24:
            return bytes([major << 5 | n])
        return bytes([major << 5 | 26]) + struct.pack(">I", n)

    if isinstance(value, str):
        return head(3, len(value.encode())) + value.encode()
    if isinstance(value, dict):
        return head(5, len(value)) + b"".join(cbor(k) + cbor(v) for k, v in value.items())
    raise TypeError(value)


def box(kind: bytes, payload: bytes) -> bytes:
    return (len(payload) + 8).to_bytes(4, "big") + kind + payload


def superbox(label: str, *children: bytes) -> bytes:
    return box(
        b"jumb",
        box(b"jumd", b"c2pa" + b"\x00" * 12 + b"\x03" + label.encode() + b"\x00")
        + b"".join(children),
    )


def manifest(
    label: str, entries: dict, assertion: str = "c2pa.training-mining", kind: bytes = b"cbor"
) -> bytes:
    content = (
        cbor({"entries": entries}) if kind == b"cbor" else json.dumps({"entries": entries}).encode()
    )
    assertions = superbox(
        "c2pa.assertions",
        superbox("c2pa.hash.data", box(b"cbor", cbor({}))),
        superbox(assertion, box(kind, content)),
    )
    return superbox(label, assertions, superbox("c2pa.claim", box(b"cbor", cbor({}))))


def store(*manifests: bytes) -> bytes:
    return superbox("c2pa", *manifests)


def app11(data: bytes, pieces: int = 2) -> bytes:
    """Split a JUMBF box over APP11 segments the way C2PA does: each continuation repeats LBox/TBox."""
    header, body = data[:8], data[8:]
    step = -(-len(body) // pieces)
    out = b""
    for i in range(pieces):
        chunk = body[i * step : (i + 1) * step]
        out += app(
            0xEB, b"JP" + (1).to_bytes(2, "big") + (i + 1).to_bytes(4, "big") + header + chunk
        )
    return out


def use(value: str) -> dict:
    return {"use": value}


def test_c2pa_active_manifest_decides() -> None:
    ingredient = manifest("urn:uuid:ingredient", {"c2pa.ai_training": use("notAllowed")})
    active = manifest(
        "urn:uuid:active",
        {"c2pa.ai_generative_training": use("notAllowed"), "c2pa.data_mining": use("allowed")},
    )
    sigs = embedded.signals(jpeg(app11(store(ingredient, active), pieces=3)))
    assert states(sigs, "c2pa") == [
        ("reserved", ("genai_training",)),
        ("allowed", ("data_mining",)),
    ]
    assert (
        "signature not verified" in sigs[-1].location
        and "c2pa.ai_generative_training: notAllowed" in sigs[-1].evidence
    )


@pytest.mark.parametrize(
    "entries,expected",
    [
        # constrained is NOT allowed; each entry stands alone: ai_training is not generative
        ({"c2pa.ai_training": use("constrained")}, [("reserved", ("ai_training",))]),
        (
            {"c2pa.data_mining": use("notAllowed"), "c2pa.ai_training": use("allowed")},
            [("reserved", ("data_mining",)), ("allowed", ("ai_training",))],
        ),
        (
            {"c2pa.ai_training": use("allowed"), "c2pa.ai_generative_training": use("allowed")},
            [("allowed", AI)],
        ),
        ({"c2pa.ai_inference": use("notAllowed")}, [("reserved", ("ai_inference",))]),
    ],
)
def test_c2pa_entries(entries: dict, expected: list) -> None:
    sigs = embedded.signals(png((b"caBX", store(manifest("urn:uuid:m", entries)))))
    assert states(sigs, "c2pa") == expected


def test_cawg_label_json_content_and_instance_suffix() -> None:
    m = manifest(
        "urn:uuid:m",
        {"cawg.ai_training": use("notAllowed")},
        assertion="cawg.training-mining__1",
        kind=b"json",
    )
    assert states(embedded.signals(png((b"caBX", store(m)))), "c2pa") == [
        ("reserved", ("ai_training",))
    ]


def test_c2pa_without_training_assertion_and_broken_stores() -> None:
    empty = store(superbox("urn:uuid:m", superbox("c2pa.assertions")))
    assert states(embedded.signals(png((b"caBX", empty))), "c2pa") == [("allowed", USES)]
    good = store(manifest("urn:uuid:m", {"c2pa.ai_training": use("notAllowed")}))
    for broken in (
        good[:-5],
        good[:4] + b"\xff\xff\xff\xff" + good[8:],
        b"\x00\x00\x00\x01jumb" + b"\xff" * 8,
    ):
        sigs = embedded.signals(png((b"caBX", broken)))
        assert states(sigs, "c2pa")[0][0] == "not_evaluable" and "unreadable" in sigs[-1].evidence
    deep = b"".join([b"\x00\x00\x00\x00jumb"] * 100)  # "to the end" boxes nested 100 deep
    assert states(embedded.signals(png((b"caBX", deep))), "c2pa")[0][0] == "not_evaluable"


def test_c2pa_raw_scan() -> None:
    m = store(manifest("urn:uuid:m", {"c2pa.ai_training": use("notAllowed")}))
    assert states(embedded.signals(b"\x00\x00\x00\x1cftypheic" + b"\x00" * 20 + m), "c2pa") == [
        ("reserved", ("ai_training",))
    ]


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBP", b""]),
    st.binary(max_size=300),
)
def test_random_bytes_never_raise(header: bytes, body: bytes) -> None:
    sigs = embedded.signals(header + body)
    assert {s.signal for s in sigs} >= {"iptc-xmp", "c2pa"}


_VALID = jpeg(
    app(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + xmp(PLUS + "DMI-PROHIBITED")),
    app11(store(manifest("urn:uuid:m", {"c2pa.ai_training": use("notAllowed")}))),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6
    )
)
def test_corrupted_files_never_raise(flips: list[tuple[int, int]]) -> None:
    data = bytearray(_VALID)
    for pos, value in flips:
        data[pos] = value
    embedded.signals(bytes(data))
