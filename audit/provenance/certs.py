"""A local certificate chain for signing Content Credentials in demos and tests.

C2PA validators refuse a self-signed signing certificate, so this makes two: a local CA and an
ES256 (ECDSA P-256) end-entity certificate it issues, with the extensions the C2PA
specification (section 14.5, "X.509 certificates") requires of a claim signer: version 3,
basicConstraints cA=false, keyUsage digitalSignature (critical), extendedKeyUsage
emailProtection, subject and authority key identifiers. Nothing trusts the local CA, so every
validator (c2pa-python included) reports the signature as valid but *untrusted*; the subject
says so too. The files are made at run time into the folder given (the model folder), the key
readable by its owner only, and are never part of the repository.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from audit.workspace import atomic_write_bytes

FOLDER = "credentials"
CA_NAME = "audit local CA (untrusted)"
SIGNER_NAME = "audit generate local test certificate (untrusted)"
ORGANISATION = "audit local test (untrusted)"


@dataclass(frozen=True)
class Chain:
    cert: Path  # end-entity certificate followed by the CA certificate (PEM)
    key: Path  # the end-entity's private key (PKCS#8 PEM, unencrypted)
    ca: Path  # the local CA certificate alone: a trust anchor for tests


def local_chain(folder: str | os.PathLike[str], days: int = 365) -> Chain:
    """The local chain in `folder/credentials/`, made if missing or expiring within a day."""
    from cryptography import x509

    root = Path(folder) / FOLDER
    chain = Chain(root / "signer-chain.pem", root / "signer-key.pem", root / "local-ca.pem")
    if chain.cert.exists() and chain.key.exists() and chain.ca.exists():
        cert = x509.load_pem_x509_certificate(chain.cert.read_bytes())
        if cert.not_valid_after_utc > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1):
            return chain
    ca_pem, cert_pem, key_pem = make_chain(days)
    # The folder is private first, so the key is never readable by others, even while written.
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    # ... and git never picks it up, wherever the model folder lives.
    atomic_write_bytes(
        root / ".gitignore", b"# made by audit generate: a private key, never commit\n*\n"
    )
    atomic_write_bytes(chain.ca, ca_pem)
    atomic_write_bytes(chain.cert, cert_pem + ca_pem)
    atomic_write_bytes(chain.key, key_pem)
    os.chmod(chain.key, 0o600)
    return chain


def make_chain(days: int = 365) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, end-entity certificate, end-entity key), PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # allow for clock skew

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
            ]
        )

    def usage(sign: bool, cert_sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=sign,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=cert_sign,
            crl_sign=cert_sign,
            encipher_only=False,
            decipher_only=False,
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name(CA_NAME))
        .issuer_name(name(CA_NAME))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days + 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(sign=False, cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(SIGNER_NAME))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(sign=True, cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return (
        ca.public_bytes(pem),
        cert.public_bytes(pem),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
