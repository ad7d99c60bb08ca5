"""Marking generated images: IPTC digital source type in XMP, then a signed C2PA manifest.

EU AI Act Article 50(2) asks providers of systems that generate images to mark the outputs
"in a machine-readable format and detectable as artificially generated". `Marker.mark` does
both things the industry reads:

1. an XMP packet in a PNG iTXt chunk keyed `XML:com.adobe.xmp` (the PNG XMP convention exiftool,
   Pillow and Adobe read) carrying `Iptc4xmpExt:DigitalSourceType` = trainedAlgorithmicMedia,
   and the matching PLUS `plus:DataMining` value of the user's training-mining choice;
2. a C2PA manifest made and signed by c2pa-python, embedded in a `caBX` chunk: `c2pa.actions.v2`
   with one `c2pa.created` action (that digital source type, the model as `softwareAgent` with
   its sha256) and the CAWG `cawg.training-mining` assertion with the user's choice for each use.

The XMP goes in first, so the manifest's hash of the file covers it. The claim thumbnail is
switched off: for a 32x32 image c2pa-rs would embed a JPEG thumbnail 30 times its size.
Every marked file is read back with c2pa-python before it is written, so a certificate that
C2PA refuses fails on the first image, not in someone else's validator.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit import __version__, credentials
from audit.errors import AuditError

# PLUS Data Mining values (http://ns.useplus.org/ldf/vocab/) for each training-mining choice.
_PLUS = {
    "notAllowed": "DMI-PROHIBITED",
    "allowed": "DMI-ALLOWED",
    "constrained": "DMI-SEE-CONSTRAINT",
}
_CERT_RULES = (
    "C2PA needs an end-entity certificate (not a CA, not self-signed) with keyUsage "
    "digitalSignature and extendedKeyUsage emailProtection or documentSigning, followed by the "
    "certificates that issued it, in one PEM file; and its private key as unencrypted PEM "
    "(EC P-256/P-384/P-521, RSA or Ed25519)."
)


# What `Marker.mark` records per image: the columns it adds to `generated.parquet`.
RECORD_SCHEMA = (
    ("digital_source_type", "string"),
    ("c2pa_manifest", "string"),
    ("c2pa_signer", "string"),
    ("c2pa_state", "string"),
    ("c2pa_trusted", "bool"),
    ("c2pa_local_certificate", "bool"),
    ("training_mining", "string"),
)
# A 1x1 white PNG, for the certificate check.
_TINY_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
    "0000000c49444154789c63f8ffff3f0005fe02fe0def46b80000000049454e44ae426082"
)


@dataclass(frozen=True)
class Signing:
    """Who signs: the certificate chain and key files, and whether audit made them locally."""

    cert: Path
    key: Path
    local: bool
    subject: str = ""
    alg: str = "es256"


def signing(
    model_dir: str | os.PathLike[str],
    sign_cert: str | os.PathLike[str] | None = None,
    sign_key: str | os.PathLike[str] | None = None,
) -> Signing:
    """The user's certificate and key, or (neither given) the model folder's local chain."""
    from audit.provenance import certs

    if (sign_cert is None) != (sign_key is None):
        raise AuditError(
            "--sign-cert and --sign-key go together: pass both (your certificate chain and its "
            "private key, PEM), or neither to sign with a local, untrusted test certificate."
        )
    if sign_cert is None or sign_key is None:
        chain = certs.local_chain(model_dir)
        cert, key, local = chain.cert, chain.key, True
    else:
        cert, key, local = Path(sign_cert), Path(sign_key), False
    subject, alg = _inspect(cert, key)
    return Signing(cert, key, local, subject, alg)


def _inspect(cert: Path, key: Path) -> tuple[str, str]:
    """(subject of the signing certificate, c2pa algorithm name for the key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    except (OSError, ValueError, IndexError) as e:
        raise AuditError(f"cannot read the certificate {cert}: {e}. {_CERT_RULES}") from e
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise AuditError(f"cannot read the private key {key}: {e}. {_CERT_RULES}") from e
    if isinstance(private, ec.EllipticCurvePrivateKey):
        alg = {256: "es256", 384: "es384", 521: "es512"}.get(private.curve.key_size)
    elif isinstance(private, rsa.RSAPrivateKey):
        alg = "ps256"
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        alg = "ed25519"
    else:
        alg = None
    if alg is None:
        raise AuditError(f"the key in {key} is of a kind C2PA cannot sign with. {_CERT_RULES}")
    return leaf.subject.rfc4514_string(), alg


def xmp_packet(training_mining: str) -> bytes:
    """The XMP packet every generated image carries."""
    plus = _PLUS[training_mining]
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"\n'
        '    xmlns:plus="http://ns.useplus.org/ldf/xmp/1.0/"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        f'    Iptc4xmpExt:DigitalSourceType="{credentials.TRAINED_ALGORITHMIC_MEDIA}"\n'
        f'    plus:DataMining="http://ns.useplus.org/ldf/vocab/{plus}"\n'
        f'    xmp:CreatorTool="audit {__version__} (audit generate)"/>\n'
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    ).encode()


def with_xmp(png: bytes, packet: bytes) -> bytes:
    """`png` with an uncompressed iTXt `XML:com.adobe.xmp` chunk right after IHDR."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise AuditError("internal: marking expects PNG bytes that start with IHDR")
    end_ihdr = 8 + 12 + int.from_bytes(png[8:12], "big")
    # keyword, NUL, compression flag 0, method 0, empty language tag, NUL, empty translation, NUL
    body = b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + packet
    chunk = len(body).to_bytes(4, "big") + b"iTXt" + body
    chunk += zlib.crc32(b"iTXt" + body).to_bytes(4, "big")
    return png[:end_ihdr] + chunk + png[end_ihdr:]


class Marker:
    """Marks PNG images for one `generate` run (one signer, one model).

    >>> with Marker(signing("models/m"), "notAllowed") as m:  # doctest: +SKIP
    ...     data, record = m.mark(png_bytes, "000000.png", {"name": "m", "sha256": "..."})
    """

    def __init__(self, sign: Signing, training_mining: str):
        import c2pa

        if training_mining not in credentials.TRAINING_MINING_CHOICES:
            raise AuditError(
                f"--training-mining {training_mining!r}: use one of "
                f"{', '.join(credentials.TRAINING_MINING_CHOICES)}."
            )
        self.sign, self.training_mining = sign, training_mining
        info = c2pa.C2paSignerInfo(sign.alg, sign.cert.read_bytes(), sign.key.read_bytes(), None)
        try:
            self._signer = c2pa.Signer.from_info(info)
        except c2pa.C2paError as e:
            raise AuditError(
                f"c2pa-python refused {sign.cert} / {sign.key}: {e}. {_CERT_RULES}"
            ) from e
        self._context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
        self._xmp = xmp_packet(training_mining)
        # One throw-away signature now: a certificate C2PA refuses fails before any sampling.
        self.mark(_TINY_PNG, "check.png", {"name": "audit certificate check"})

    def __enter__(self) -> Marker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._signer.close()
        self._context.close()

    def manifest(self, title: str, software_agent: dict[str, Any]) -> dict[str, Any]:
        return {
            "claim_generator_info": [{"name": "audit", "version": __version__}],
            "title": title,
            "format": "image/png",
            "assertions": [
                {
                    "label": "c2pa.actions.v2",
                    "data": {
                        "actions": [
                            {
                                "action": "c2pa.created",
                                "digitalSourceType": credentials.TRAINED_ALGORITHMIC_MEDIA,
                                "softwareAgent": software_agent,
                            }
                        ]
                    },
                },
                {
                    "label": credentials.TRAINING_MINING_LABEL,
                    "data": {
                        "entries": {
                            use: {"use": self.training_mining}
                            for use in credentials.TRAINING_MINING_USES
                        }
                    },
                },
            ],
        }

    def mark(
        self, png: bytes, title: str, software_agent: dict[str, Any]
    ) -> tuple[bytes, dict[str, Any]]:
        """(marked PNG bytes, what was embedded: the columns `generated.parquet` records).

        `software_agent`: the C2PA generator-info map of the model (name, version, sha256)."""
        import c2pa

        source = io.BytesIO(with_xmp(png, self._xmp))
        out = io.BytesIO()
        try:
            with c2pa.Builder.from_json(
                json.dumps(self.manifest(title, software_agent)), self._context
            ) as b:
                b.sign(self._signer, "image/png", source, out)
        except c2pa.C2paError as e:
            raise AuditError(
                f"c2pa-python could not sign with {self.sign.cert}: {e}. {_CERT_RULES}"
            ) from e
        data = out.getvalue()
        check = credentials.read(data)
        if check is None or check.state not in ("untrusted", "trusted"):
            raise AuditError(
                f"the C2PA manifest just written for {title} does not validate "
                f"({check.summary if check else 'no manifest found'}). {_CERT_RULES}"
            )
        return data, {
            "digital_source_type": credentials.TRAINED_ALGORITHMIC_MEDIA,
            "c2pa_manifest": check.manifest,
            "c2pa_signer": self.sign.subject,
            "c2pa_state": check.state,
            "c2pa_trusted": check.state == "trusted",
            "c2pa_local_certificate": self.sign.local,
            "training_mining": self.training_mining,
        }
