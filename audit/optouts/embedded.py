"""Opt-out signals carried inside the image file: IPTC/PLUS `plus:DataMining` in XMP, and C2PA.

XMP packets are found where each container keeps them (JPEG APP1 incl. Extended XMP, PNG iTXt/zTXt/tEXt
`XML:com.adobe.xmp`, WebP `XMP ` chunk), else by a bounded raw scan for `<x:xmpmeta` (GIF, TIFF, HEIF...).
They are parsed with defusedxml: a packet declaring entities is refused ("XMP rejected: entities") and
recorded as not_evaluable rather than expanded. `plus:DataMining` is read as an attribute, an element text
or an `rdf:resource`. The PLUS Data Mining vocabulary (http://ns.useplus.org/ldf/vocab/) maps to:

    DMI-UNSPECIFIED                            allowed (no statement made)
    DMI-ALLOWED                                allowed
    DMI-PROHIBITED-AIMLTRAINING                reserved: ai_training (+ genai_training)
    DMI-PROHIBITED-GENAIMLTRAINING             reserved: genai_training
    DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING  reserved: data_mining (+ all training); search allowed
    DMI-PROHIBITED                             reserved: data_mining (+ all training), search_indexing
    DMI-PROHIBITED-SEECONSTRAINT               reserved: data_mining; `plus:OtherConstraints` quoted
    DMI-PROHIBITED-SEEEMBEDDEDRIGHTSEXPR       reserved: data_mining; the embedded encoded rights
                                               expression (Iptc4xmpExt:EmbdEncRightsExpr) quoted
    DMI-PROHIBITED-SEELINKEDRIGHTSEXPR         reserved: data_mining; the linked rights expression
                                               (Iptc4xmpExt:LinkedEncRightsExpr) quoted
    anything else                              not_evaluable (value quoted as evidence)

The three "see ..." values say prohibited unless the terms elsewhere allow it; a machine cannot
evaluate those terms, so we do not assume consent, and quote them for a human to read.

TDMRep's XMP property (`tdm:reservation` 1/0, TDMRep namespace) is read too, as a "tdm-meta" signal.

C2PA: the JUMBF manifest store (JPEG APP11 segments reassembled, PNG `caBX`, WebP `C2PA`, else a raw scan)
is read; in the active manifest (the last in the store) the `c2pa.training-mining` (C2PA 1.4) /
`cawg.training-mining` (CAWG 1.0, 1.1) assertions (CBOR or JSON; `__N` instance suffixes allowed)
give entries `*.ai_generative_training` -> genai_training, `*.ai_training` -> ai_training,
`*.data_mining` -> data_mining, `*.ai_inference` -> ai_inference, each with `use`
allowed | notAllowed | constrained. Each entry stands alone (C2PA 1.4 lists them as separate
permissions): `ai_training: notAllowed` does not reserve generative training, and
`ai_generative_training: notAllowed` does not reserve other training. notAllowed and constrained
reserve (CAWG: "In the absence of additional information, `constrained` shall be treated as
equivalent to `notAllowed`"; `constraint_info` / `constraints_info` is quoted). The entries
sit under `entries` (C2PA 1.4, CAWG 1.1) or directly in the assertion map (the CAWG 1.0 form).
Entries with other (custom) keys are no signal, but their keys are reported in the evidence.
Signatures are NOT verified here: the location says "C2PA assertion (signature not verified)";
the consent stage then hands the same bytes to c2pa-python (`optouts.signature.annotate`), which
replaces that with the signature's state and signer.

>>> [(s.signal, s.state) for s in signals(b"")]
[('iptc-xmp', 'not_evaluable'), ('c2pa', 'not_evaluable')]
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from audit.optouts import jumbf
from audit.optouts.signals import ALL_USES, USES, Signal, expand_uses

MAX_XMP = 2 * 1024 * 1024
MAX_JUMBF = 16 * 1024 * 1024
PLUS_NS = "http://ns.useplus.org/ldf/xmp/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_XMP_SIG = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_EXT_SIG = b"http://ns.adobe.com/xmp/extension/\x00"
_XMP_LOC = "image bytes (XMP)"
_C2PA_LOC = "image bytes (C2PA assertion, signature not verified)"

_DMI: dict[str, tuple[str, tuple[str, ...]]] = {
    "DMI-UNSPECIFIED": ("allowed", USES),
    "DMI-ALLOWED": ("allowed", USES),
    "DMI-PROHIBITED-AIMLTRAINING": ("reserved", expand_uses(["ai_training"])),
    "DMI-PROHIBITED-GENAIMLTRAINING": ("reserved", expand_uses(["genai_training"])),
    "DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING": ("reserved", expand_uses(["data_mining"])),
    "DMI-PROHIBITED": ("reserved", expand_uses(["data_mining", "search_indexing"])),
    "DMI-PROHIBITED-SEECONSTRAINT": ("reserved", expand_uses(["data_mining"])),
    "DMI-PROHIBITED-SEEEMBEDDEDRIGHTSEXPR": ("reserved", expand_uses(["data_mining"])),
    "DMI-PROHIBITED-SEELINKEDRIGHTSEXPR": ("reserved", expand_uses(["data_mining"])),
}
# The "see ..." values and the XMP property holding the terms they point to.
_SEE = {
    "DMI-PROHIBITED-SEECONSTRAINT": "OtherConstraints",
    "DMI-PROHIBITED-SEEEMBEDDEDRIGHTSEXPR": "EmbdEncRightsExpr",
    "DMI-PROHIBITED-SEELINKEDRIGHTSEXPR": "LinkedEncRightsExpr",
}
_C2PA_USES = {
    "ai_generative_training": "genai_training",
    "ai_training": "ai_training",
    "data_mining": "data_mining",
    "ai_inference": "ai_inference",
}


# ---- finding the packets ----------------------------------------------------------------------------


def _jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    pos = 2
    while pos + 4 <= len(data) and len(out) < 10_000:
        if data[pos] != 0xFF:
            break  # lost sync: stop rather than guess
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xDA)):
            pos += 2
            continue
        if marker == 0xDA:  # start of scan: metadata comes before it
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            break
        out.append((marker, data[pos + 4 : pos + 2 + length]))
        pos += 2 + length
    return out


def _jpeg(data: bytes) -> tuple[list[bytes], list[bytes]]:
    xmp: list[bytes] = []
    extended: dict[bytes, dict[int, bytes]] = {}
    jumbf_parts: dict[int, dict[int, bytes]] = {}
    for marker, payload in _jpeg_segments(data):
        if marker == 0xE1 and payload.startswith(_XMP_SIG):
            xmp.append(payload[len(_XMP_SIG) :])
        elif (
            marker == 0xE1
            and payload.startswith(_XMP_EXT_SIG)
            and len(payload) > len(_XMP_EXT_SIG) + 40
        ):
            body = payload[len(_XMP_EXT_SIG) :]
            guid, offset = body[:32], int.from_bytes(body[36:40], "big")
            extended.setdefault(guid, {})[offset] = body[40:]
        elif marker == 0xEB and payload[:2] == b"JP" and len(payload) >= 16:
            instance, seq = int.from_bytes(payload[2:4], "big"), int.from_bytes(payload[4:8], "big")
            jumbf_parts.setdefault(instance, {})[seq] = payload[8:]
    for (
        chunks
    ) in extended.values():  # Extended XMP: the main packet overflowed into more APP1 segments
        joined = b"".join(chunks[k] for k in sorted(chunks))
        if len(joined) <= MAX_XMP:
            xmp.append(joined)
    stores = []
    for parts in jumbf_parts.values():
        seqs = sorted(parts)
        first = parts[seqs[0]]
        pieces = [first]
        # Continuation segments repeat the box header (LBox, TBox and XLBox if LBox == 1); skip it.
        header = 16 if int.from_bytes(first[:4], "big") == 1 else 8
        pieces += [parts[s][header:] for s in seqs[1:]]
        stores.append(b"".join(pieces)[:MAX_JUMBF])
    return xmp, stores


def _png(data: bytes) -> tuple[list[bytes], list[bytes]]:
    xmp, stores, pos = [], [], 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        ctype, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if ctype == b"caBX":
            stores.append(body)
        elif ctype in (b"iTXt", b"zTXt", b"tEXt") and body.startswith(b"XML:com.adobe.xmp\x00"):
            rest = body[len(b"XML:com.adobe.xmp\x00") :]
            if ctype == b"iTXt" and len(rest) >= 2:
                compressed, text = rest[0] == 1, rest[2:]
                text = text.split(b"\x00", 2)[-1]  # skip language tag and translated keyword
            elif ctype == b"zTXt":
                compressed, text = True, rest[1:]
            else:
                compressed, text = False, rest
            xmp.append(_inflate(text) if compressed else text)
        elif ctype == b"IEND":
            break
    return xmp, stores


def _inflate(data: bytes) -> bytes:
    # At most MAX_XMP + 1 bytes are inflated: a bigger packet is then refused by its size, so a zlib
    # bomb costs nothing. Undecompressable data is passed on as is and fails to parse, on the record.
    try:
        return zlib.decompressobj().decompress(data, MAX_XMP + 1)
    except zlib.error:
        return data


def _webp(data: bytes) -> tuple[list[bytes], list[bytes]]:
    xmp, stores, pos = [], [], 12
    while pos + 8 <= len(data):
        fourcc, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)
        if fourcc == b"XMP ":
            xmp.append(body)
        elif fourcc == b"C2PA":
            stores.append(body)
    return xmp, stores


def _raw_xmp(data: bytes) -> list[bytes]:
    start = data.find(b"<x:xmpmeta")
    if start < 0:
        return []
    end = data.find(b"</x:xmpmeta>", start, start + MAX_XMP)
    return (
        [data[start : end + len(b"</x:xmpmeta>")]] if end >= 0 else [data[start : start + MAX_XMP]]
    )


def _raw_jumbf(data: bytes) -> list[bytes]:
    # A C2PA store is a jumb box whose jumd label is "c2pa": ....jumb ....jumd <16-byte uuid><toggles>c2pa\0
    pos = data.find(b"jumd")
    while pos >= 8:
        if data[pos - 8 : pos - 4] == b"jumb" and data[pos + 21 : pos + 26] == b"c2pa\x00":
            start = pos - 12
            return [data[start : start + MAX_JUMBF]]
        pos = data.find(b"jumd", pos + 4)
    return []


def find_packets(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """(XMP packets, C2PA manifest stores) found in the bytes of one image."""
    if data[:2] == b"\xff\xd8":
        xmp, stores = _jpeg(data)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        xmp, stores = _png(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        xmp, stores = _webp(data)
    else:
        xmp, stores = [], []
    return (xmp or _raw_xmp(data)), (stores or _raw_jumbf(data))


# ---- XMP --------------------------------------------------------------------------------------------


def _local(name: str) -> tuple[str, str]:
    if name.startswith("{"):
        ns, _, local = name[1:].partition("}")
        return ns, local
    return "", name


def _xmp_values(root: Any) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """plus:DataMining values, the terms "see ..." values point to (plus:OtherConstraints,
    Iptc4xmpExt:EmbdEncRightsExpr / LinkedEncRightsExpr texts) and tdm:reservation values."""
    mining: list[str] = []
    other: dict[str, list[str]] = {}
    tdm: list[str] = []
    for el in root.iter():
        for key, value in list(el.attrib.items()) + [(el.tag, None)]:
            ns, local = _local(key)
            if value is None:  # the element itself as a property
                value = (el.text or "").strip() or el.attrib.get(f"{{{RDF_NS}}}resource", "")
                if not value:  # rdf:Alt / rdf:Bag: take the list items
                    value = " ".join(
                        (li.text or "").strip() for li in el.iter() if _local(li.tag)[1] == "li"
                    )
            if ns.startswith("http://ns.useplus.org/") and local == "DataMining":
                mining.append(value.strip())
            elif ns.startswith("http://ns.useplus.org/") and local == "OtherConstraints":
                other.setdefault(local, []).append(value.strip())
            elif ns.startswith("http://iptc.org/std/Iptc4xmpExt/") and local in (
                "EmbdEncRightsExpr",
                "LinkedEncRightsExpr",
            ):
                text = " ".join(t.strip() for t in el.itertext() if t.strip()) or value.strip()
                other.setdefault(local, []).append(text)
            elif "tdmrep" in ns and local == "reservation":
                tdm.append(value.strip())
    return mining, other, tdm


def xmp_signals(packet: bytes) -> list[Signal]:
    """Signals of one XMP packet (see the module doc for the PLUS mapping)."""
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import ParseError, fromstring

    if len(packet) > MAX_XMP:
        return [
            Signal("iptc-xmp", "not_evaluable", USES, _XMP_LOC, f"XMP packet over {MAX_XMP} bytes")
        ]
    try:
        root = fromstring(packet.strip(b"\x00 \t\r\n"))
    except DefusedXmlException as e:
        return [
            Signal(
                "iptc-xmp",
                "not_evaluable",
                USES,
                _XMP_LOC,
                f"XMP rejected: entities ({type(e).__name__})",
            )
        ]
    except (ParseError, ValueError) as e:
        return [Signal("iptc-xmp", "not_evaluable", USES, _XMP_LOC, f"XMP unparseable: {e}")]
    mining, other, tdm = _xmp_values(root)
    out: list[Signal] = []
    for value in mining:
        code = value.rstrip("/").rsplit("/", 1)[-1].strip().upper()
        evidence = f"plus:DataMining={value}"
        if code in _SEE:
            terms = other.get(_SEE[code])
            evidence += f"; {_SEE[code]}={terms[0]}" if terms else f"; no {_SEE[code]} found"
        state, uses = _DMI.get(code, ("not_evaluable", USES))
        if code not in _DMI:
            evidence += " (not a PLUS Data Mining value)"
        out.append(Signal("iptc-xmp", state, uses, _XMP_LOC, evidence))
    for value in tdm:
        if value in ("1", "0"):
            state, uses = (
                ("reserved", expand_uses(["data_mining"])) if value == "1" else ("allowed", USES)
            )
            out.append(Signal("tdm-meta", state, uses, _XMP_LOC, f"tdm:reservation={value}"))
    return out


# ---- C2PA -------------------------------------------------------------------------------------------


def _assertion_data(box: jumbf.Superbox) -> Any:
    for kind, payload in box.contents:
        if kind == "cbor":
            return jumbf.decode_cbor(payload)
        if kind == "json":
            return json.loads(payload.decode("utf-8"))
    raise jumbf.FormatProblem(f"assertion {box.label!r} has no cbor or json content")


def _is_training_label(label: str) -> bool:
    for base in ("c2pa.training-mining", "cawg.training-mining"):
        if label == base or label.startswith(base + "__") or label.startswith(base + ".v"):
            return True
    return False


def c2pa_signals(store_bytes: bytes) -> list[Signal]:
    """Signals of one C2PA manifest store (JUMBF bytes), from its active manifest."""
    try:
        store = jumbf.parse_superbox(store_bytes)
        if store.label != "c2pa" or not store.children:
            return [
                Signal(
                    "c2pa",
                    "allowed",
                    USES,
                    _C2PA_LOC,
                    f"JUMBF box {store.label!r} holds no C2PA manifest",
                )
            ]
        active = store.children[-1]
        assertions = active.child("c2pa.assertions")
        found = [
            a for a in (assertions.children if assertions else []) if _is_training_label(a.label)
        ]
        entries: list[tuple[str, str, str, str]] = []  # (label, entry key, use, constraint)
        for box in found:
            data = _assertion_data(box)
            for key, entry in _entries(data):
                use = entry.get("use", "") if isinstance(entry, dict) else ""
                # C2PA 1.4 names it constraint_info, CAWG 1.1 constraints_info
                info = (
                    entry.get("constraint_info") or entry.get("constraints_info") or ""
                    if isinstance(entry, dict)
                    else ""
                )
                entries.append((box.label, str(key), str(use), str(info or "")))
    except (jumbf.FormatProblem, ValueError, RecursionError) as e:
        return [
            Signal("c2pa", "not_evaluable", USES, _C2PA_LOC, f"C2PA manifest store unreadable: {e}")
        ]
    if not found:
        note = f"active manifest {active.label!r} has no training-mining assertion"
        return [Signal("c2pa", "allowed", USES, _C2PA_LOC, note)]
    reserved, allowed, text, custom = set(), set(), [], []
    for _label, key, use, info in entries:
        standard = key.startswith(("c2pa.", "cawg.")) or "." not in key
        ours = _C2PA_USES.get(key.split(".", 1)[-1]) if standard else None
        text.append(f"{key}: {use}" + (f" ({info})" if info else ""))
        if ours is None:
            custom.append(key)
            continue
        if use.lower() in ("notallowed", "constrained"):
            reserved.add(ours)
        elif use.lower() == "allowed":
            allowed.add(ours)
    labels = ", ".join(sorted({b.label for b in found}))
    evidence = f"{labels} {{{'; '.join(text)}}}"
    if custom:
        evidence += f" (custom keys, no signal: {', '.join(custom)})"
    out = []
    # Each entry stands alone: no widening of a reservation to the narrower uses.
    if reserved:
        uses = tuple(u for u in ALL_USES if u in reserved)
        out.append(Signal("c2pa", "reserved", uses, _C2PA_LOC, evidence))
    rest = tuple(u for u in ALL_USES if u in allowed and u not in reserved)
    if rest or not reserved:
        out.append(Signal("c2pa", "allowed", rest or USES, _C2PA_LOC, evidence))
    return out


def _entries(data: Any) -> list[tuple[Any, Any]]:
    """The (key, entry) pairs of a training-mining assertion: under `entries` (C2PA 1.4, CAWG
    1.1) or, in the CAWG 1.0 form, the assertion map itself."""
    if not isinstance(data, dict):
        return []
    items = data.get("entries")
    if isinstance(items, dict):
        return list(items.items())
    if isinstance(items, list):  # some writers emit a list of {"key"/"name": ..., "use": ...}
        return [(e.get("key") or e.get("name") or "", e) for e in items if isinstance(e, dict)]
    return [(k, v) for k, v in data.items() if isinstance(v, dict) and "use" in v]


def signals(image_bytes: bytes | None) -> list[Signal]:
    """Every embedded signal of one image: at least one "iptc-xmp" and one "c2pa" signal."""
    if not image_bytes:
        why = "no image bytes"
        return [
            Signal("iptc-xmp", "not_evaluable", USES, _XMP_LOC, why),
            Signal("c2pa", "not_evaluable", USES, _C2PA_LOC, why),
        ]
    data = bytes(image_bytes)
    packets, stores = find_packets(data)
    out: list[Signal] = []
    for packet in packets:
        out += xmp_signals(packet)
    if not any(s.signal == "iptc-xmp" for s in out):
        note = "XMP without plus:DataMining" if packets else "no XMP packet"
        out.append(Signal("iptc-xmp", "allowed", USES, _XMP_LOC, note))
    for store in stores:
        out += c2pa_signals(store)
    if not stores:
        out.append(Signal("c2pa", "allowed", USES, _C2PA_LOC, "no C2PA manifest store"))
    return out
