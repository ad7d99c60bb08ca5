"""Content Credentials and IPTC digital source types read from image bytes (base layer).

Two marks say an image was generated:

- XMP `Iptc4xmpExt:DigitalSourceType` (IPTC Photo Metadata, NewsCodes vocabulary
  http://cv.iptc.org/newscodes/digitalsourcetype/), written as the full URI or the bare code;
- a C2PA manifest whose `c2pa.actions` assertion has an action with that `digitalSourceType`.

C2PA manifests are read with the maintained `c2pa-python` library (the Rust c2pa-rs SDK), which
verifies the claim signature, the certificate chain and the hashes that bind the manifest to
the image. Its validation codes are mapped to one `state` (`STATES`):

    trusted     signature valid and the signer chains to a trust anchor we were given
    untrusted   signature and hashes valid, but the signer is not on any trust list we hold
                (c2pa code signingCredential.untrusted): anyone can make such a certificate
    tampered    a hash no longer matches (any failure code ending in `.mismatch`, e.g.
                assertion.dataHash.mismatch when the pixels changed after signing)
    invalid     any other failure (expired or malformed certificate, missing signature...)
    unreadable  bytes hold a C2PA store that c2pa-python cannot read (the error is kept)

Only bytes that contain the JUMBF label `c2pa` are handed to the library, so images without a
manifest cost one substring search.

>>> source_types_in_xmp(b'<x:xmpmeta><rdf:Description Iptc4xmpExt:DigitalSourceType="trainedAlgorithmicMedia"/></x:xmpmeta>')
['http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia']
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

IPTC_DST = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED_ALGORITHMIC_MEDIA = IPTC_DST + "trainedAlgorithmicMedia"
# The three generated-media codes, plus compositeWithTrainedAlgorithmicMedia: IPTC's code
# for captured media edited with generative AI (inpainting, outpainting), which holds generated
# pixels too. Every other code (digitalCapture, ...) is recorded but is not "synthetic".
SYNTHETIC_TYPES: tuple[str, ...] = tuple(
    IPTC_DST + code
    for code in (
        "trainedAlgorithmicMedia",
        "compositeSynthetic",
        "algorithmicMedia",
        "compositeWithTrainedAlgorithmicMedia",
    )
)
TRAINING_MINING_LABEL = "cawg.training-mining"
# CAWG training-and-data-mining assertion: one entry per use, each allowed | notAllowed | constrained.
TRAINING_MINING_USES = (
    "cawg.ai_generative_training",
    "cawg.ai_training",
    "cawg.ai_inference",
    "cawg.data_mining",
)
TRAINING_MINING_CHOICES = ("notAllowed", "allowed", "constrained")
STATES = ("trusted", "untrusted", "tampered", "invalid", "unreadable")
MAX_XMP = 2 * 1024 * 1024

# Every quantifier is bounded, so a hostile packet (megabytes of spaces after the name) costs
# linear time: no two unbounded runs compete for the same characters.
_DST_PATTERN = re.compile(
    rb"DigitalSourceType(?:\s{0,20}=\s{0,20}[\"']([^\"']{1,300})[\"']|>([^<]{1,300})<"
    rb"|\s{1,20}rdf:resource\s{0,20}=\s{0,20}[\"']([^\"']{1,300})[\"'])"
)


@dataclass
class Credentials:
    """What c2pa-python says about the manifest store of one image."""

    state: str  # one of STATES
    manifest: str = ""  # label of the active manifest (urn:c2pa:...)
    signer: str = ""  # common name of the signing certificate
    issuer: str = ""  # organisation of the certificate's issuer
    failures: list[str] = field(default_factory=list)  # c2pa validation failure codes
    source_types: list[str] = field(default_factory=list)  # digitalSourceType of every action
    training_mining: dict[str, str] = field(default_factory=dict)  # entry -> use
    error: str = ""

    @property
    def summary(self) -> str:
        """One line for evidence strings: state, signer, failure codes."""
        if self.state == "unreadable":
            return f"C2PA unreadable by c2pa-python: {self.error}"
        who = f"signed by {self.signer or '?'}" + (f" ({self.issuer})" if self.issuer else "")
        codes = f"; failures {', '.join(self.failures)}" if self.failures else ""
        return f"signature {self.state}, {who}{codes}"


def normalise_source_type(value: str) -> str:
    """A digital source type as its full IPTC URI (a bare code such as `trainedAlgorithmicMedia`
    gets the NewsCodes prefix; other URIs are kept as they are)."""
    value = value.strip()
    if value and "/" not in value and ":" not in value:
        return IPTC_DST + value
    return value


def is_synthetic(source_type: str) -> bool:
    return normalise_source_type(source_type).rstrip("/") in SYNTHETIC_TYPES


def xmp_packets(data: bytes) -> list[bytes]:
    """XMP packets of one image, located by Pillow (JPEG APP1, PNG iTXt/zTXt, WebP, TIFF, GIF),
    else by a bounded scan for `<x:xmpmeta` (formats Pillow does not open)."""
    from PIL import Image, UnidentifiedImageError

    packets: list[bytes] = []
    try:
        with Image.open(io.BytesIO(data)) as img:
            for key in ("xmp", "XML:com.adobe.xmp"):
                value = img.info.get(key)
                packet = value.encode("utf-8") if isinstance(value, str) else value
                if packet and packet not in packets:  # PNG: Pillow files it under both keys
                    packets.append(packet)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        pass  # not an image Pillow knows: the raw scan below still looks
    if not packets:
        start = data.find(b"<x:xmpmeta")
        if start >= 0:
            end = data.find(b"</x:xmpmeta>", start, start + MAX_XMP)
            packets.append(data[start : end + 12] if end >= 0 else data[start : start + MAX_XMP])
    return packets


def source_types_in_xmp(packet: bytes) -> list[str]:
    """Every `DigitalSourceType` value of one XMP packet (attribute, element or rdf:resource),
    as full URIs. A regular expression rather than an XML parser: the property is a plain
    URI, and a hostile packet (entities, broken XML) must not hide it or cost anything."""
    found = []
    for match in _DST_PATTERN.finditer(packet[:MAX_XMP]):
        raw = next(g for g in match.groups() if g is not None).decode("utf-8", "replace")
        if raw.strip():  # the text after a closing tag is whitespace: not a value
            found.append(normalise_source_type(raw))
    return found


def has_c2pa(data: bytes) -> bool:
    """Whether the bytes may hold an embedded C2PA store (its JUMBF label is `c2pa`)."""
    return data.find(b"c2pa") >= 0


_CONTEXTS: dict[str, Any] = {}


def _context(trust_anchors: str | None) -> Any:
    import c2pa

    key = trust_anchors or ""
    if key not in _CONTEXTS:
        settings: dict[str, Any] = {"verify": {"verify_trust": True}}
        if trust_anchors:
            settings["trust"] = {"trust_anchors": trust_anchors}
        _CONTEXTS[key] = c2pa.Context.from_dict(settings)
    return _CONTEXTS[key]


def read(data: bytes, trust_anchors: str | None = None) -> Credentials | None:
    """The validated C2PA manifest store of one image, or None when it has none.

    `trust_anchors`: PEM certificates whose chains count as trusted (none by default, so every
    signer is at best "untrusted": audit ships no trust list).
    """
    import c2pa

    if not has_c2pa(data):
        return None
    try:
        reader = c2pa.Reader.try_create(io.BytesIO(data), context=_context(trust_anchors))
        if reader is None:
            return None
        with reader:
            store = json.loads(reader.json())
    except c2pa.C2paError as e:
        # NotSupported: a format c2pa-rs does not read (the bytes "c2pa" occurred by chance, or
        # the store sits in a container it cannot parse): nothing can be said, as with no store.
        if any(k in type(e).__name__ for k in ("ManifestNotFound", "NotSupported")):
            return None
        return Credentials("unreadable", error=f"{type(e).__name__.lstrip('_')}: {e}"[:200])
    return _credentials(store)


def _credentials(store: dict[str, Any]) -> Credentials:
    label = store.get("active_manifest") or ""
    manifest = (store.get("manifests") or {}).get(label) or {}
    # The active manifest's own failures; ingredients' problems are theirs, not this signature's.
    # Older c2pa-rs versions give only the flat `validation_status` list.
    if "validation_results" in store:
        results = (store.get("validation_results") or {}).get("activeManifest") or {}
        failures = [str(f.get("code", "")) for f in results.get("failure") or []]
    else:
        failures = [str(f.get("code", "")) for f in store.get("validation_status") or []]
    if any(code.endswith(".mismatch") for code in failures):
        state = "tampered"
    elif store.get("validation_state") == "Trusted" and not failures:
        state = "trusted"
    elif failures and all(code == "signingCredential.untrusted" for code in failures):
        state = "untrusted"
    elif failures:
        state = "invalid"
    else:  # Valid with no failure: trust was not checked, so it is not trusted either
        state = "untrusted"
    info = manifest.get("signature_info") or {}
    creds = Credentials(
        state,
        manifest=label,
        signer=str(info.get("common_name") or ""),
        issuer=str(info.get("issuer") or ""),
        failures=failures,
    )
    for assertion in manifest.get("assertions") or []:
        name, data = str(assertion.get("label", "")), assertion.get("data") or {}
        if name.startswith("c2pa.actions") and isinstance(data, dict):
            for action in data.get("actions") or []:
                if isinstance(action, dict) and action.get("digitalSourceType"):
                    creds.source_types.append(normalise_source_type(action["digitalSourceType"]))
        elif name.split("__")[0] in (TRAINING_MINING_LABEL, "c2pa.training-mining"):
            for key, entry in (data.get("entries") or {}).items():
                if isinstance(entry, dict):
                    creds.training_mining[str(key)] = str(entry.get("use", ""))
    return creds


def marking_statement() -> str:
    """How `audit generate` marks its outputs, for the model card (EU AI Act Article 50(2))."""
    return (
        "Every image `audit generate` writes is marked as generated, in two machine-readable ways: "
        f"XMP `Iptc4xmpExt:DigitalSourceType` = `{TRAINED_ALGORITHMIC_MEDIA}` (an iTXt "
        "`XML:com.adobe.xmp` chunk in the PNG, read by exiftool and most photo tools), and a C2PA "
        "manifest (Content Credentials, made with c2pa-python) whose `c2pa.actions` assertion "
        "records `c2pa.created` with that digital source type and this model as software agent "
        f"(with its sha256), plus a CAWG `{TRAINING_MINING_LABEL}` assertion with the user's "
        f"choice for {', '.join(TRAINING_MINING_USES)} (`--training-mining`, default "
        f"{TRAINING_MINING_CHOICES[0]}). The manifest is signed with the user's certificate "
        "(`--sign-cert`, `--sign-key`); without one, with a certificate made locally for the "
        "model folder, which no validator trusts and which is reported as untrusted. "
        "`generated.parquet` records what was embedded in each file. Stripping metadata removes "
        "both marks; they are labels, not watermarks in the pixels."
    )
