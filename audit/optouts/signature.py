"""The signature status of C2PA opt-out signals, from the maintained c2pa-python library.

`embedded` reads the training-mining assertion with a hand-written, bounded JUMBF/CBOR reader
and does not verify anything. This module hands the same image bytes to c2pa-python
(`audit.credentials.read`), which checks the claim signature, the certificate chain and the
hashes binding the manifest to the image, and puts the result into every "c2pa" signal that
came from a manifest: the location says `signature <state>` and the evidence starts with the
state, the signer and c2pa's failure codes, e.g.

    [signature untrusted, signed by Jane (Example Org); failures signingCredential.untrusted] ...

The decision itself does not change: a reservation counts whatever its signature (an unsigned
"do not train" is still a refusal, not consent), and an "allowed" entry of a tampered manifest
says no more than no entry would. The status is evidence, so a reviewer can tell a verifiable
reservation from an unverifiable one.
"""

from __future__ import annotations

import dataclasses

from audit import credentials
from audit.optouts.signals import Signal

_NO_STORE = "no C2PA manifest store"


def annotate(sigs: list[Signal], data: bytes) -> list[Signal]:
    """`sigs` with the C2PA signature status added to each "c2pa" signal from a manifest."""
    from_store = [s.signal == "c2pa" and _NO_STORE not in s.evidence for s in sigs]
    if not any(from_store) or not credentials.has_c2pa(data):
        return sigs
    creds = credentials.read(data)
    if creds is None:
        status, where = "c2pa-python found no manifest it can read", "signature not verifiable"
    else:
        status, where = creds.summary, f"signature {creds.state}"
    out = []
    for s, annotated in zip(sigs, from_store, strict=True):
        if annotated:
            s = dataclasses.replace(
                s,
                location=f"image bytes (C2PA assertion, {where}; checked by c2pa-python)",
                evidence=f"[{status}] {s.evidence}",
            )
        out.append(s)
    return out
