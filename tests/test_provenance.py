"""Content Credentials on what `audit generate` writes, and generated images found in a dataset.

The round trip is the issue's own test: `audit generate` (tiny model, few steps) -> `audit ingest`
of its output -> `audit provenance` finds 100% synthetic; c2pa-python validates every manifest
(valid signature, untrusted local CA); exiftool reads the XMP; changed pixels read as tampered.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zlib
from pathlib import Path

import c2pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from conftest import encode, synthetic_image
from PIL import Image

from audit import cards, credentials, provenance
from audit.cli import cli
from audit.optouts import embedded, signature
from audit.provenance import certs, marking
from audit.workspace import Workspace, sha256_file

DST = "http://cv.iptc.org/newscodes/digitalsourcetype/"


def run(*args: object):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A DDPM trained for 2 steps on 6 tiny images (seconds on one thread)."""
    from conftest import build_workspace

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("model")
    ws = build_workspace(root / "ws", [encode(synthetic_image(i, 40)) for i in range(6)])
    out = root / "models" / "m"
    run("train", ws.root, "--out", out, "--steps", 2, "--batch-size", 4, "--sample-grid", 0,
        "--all-rows", "--device", "cpu")  # fmt: skip
    yield out
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def generated(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "g"
    result = run("generate", model, "--n", 4, "--out", out, "--steps", 3, "--device", "cpu")
    assert "LOCAL, UNTRUSTED" in result.output and "training-mining notAllowed" in result.output
    return out


def pngs(folder: Path) -> list[Path]:
    return sorted((folder / "generated").glob("*.png"))


def test_round_trip_generate_ingest_all_synthetic(model, generated, tmp_path):
    ws = tmp_path / "ws-gen"
    run("ingest", ws, generated)
    result = run("provenance", ws, "--report-dir", tmp_path / "reports")
    assert "4 rows; 4 marked as generated (iptc-xmp+c2pa 4)" in result.output
    assert "C2PA: untrusted 4" in result.output
    rows = (
        Workspace.open(ws)
        .connect()
        .execute(
            "SELECT synthetic, mark, digital_source_type, c2pa_state, c2pa_signer FROM synthetic"
        )
        .fetchall()
    )
    assert len(rows) == 4
    for synthetic, mark, dst, state, signer in rows:
        assert synthetic is True and mark == "iptc-xmp+c2pa"
        assert dst == DST + "trainedAlgorithmicMedia" and state == "untrusted"
        assert signer == certs.SIGNER_NAME
    page = (tmp_path / "reports" / "synthetic.md").read_text()
    assert "4 of 4 rows (100.0%) are marked as generated" in page
    # all four come from file:// URLs, which have no host: one source at 100%
    assert "| (no host) | 4 | 4 | 100 |" in page
    # Given the local CA as a trust anchor, the same signatures are trusted.
    ca = model / "credentials" / "local-ca.pem"
    trusted = run("provenance", ws, "--trust-anchors", ca, "--report-dir", tmp_path / "reports")
    assert "C2PA: trusted 4" in trusted.output

    # The consent stage reads the notAllowed training-mining choice, with its signature status.
    run("optout", ws, "--report-dir", tmp_path / "reports")
    con = Workspace.open(ws).connect()
    decisions = con.execute("SELECT DISTINCT decision FROM optout").fetchall()
    assert decisions == [("reserved",)]
    loc, ev = con.execute(
        "SELECT DISTINCT location, evidence FROM optout_signals WHERE signal = 'c2pa'"
    ).fetchone()
    assert "signature untrusted" in loc and "checked by c2pa-python" in loc
    assert ev.startswith(f"[signature untrusted, signed by {certs.SIGNER_NAME}")
    assert "cawg.ai_generative_training: notAllowed" in ev


def test_exclude_synthetic_drops_marked_rows(model, tmp_path):
    # Outputs that allow training pass the consent filter; only --exclude-synthetic drops them.
    gen = tmp_path / "g"
    run("generate", model, "--n", 3, "--out", gen, "--steps", 2, "--training-mining", "allowed")
    ws = tmp_path / "ws"
    run("ingest", ws, gen)
    run("optout", ws, "--report-dir", tmp_path / "reports")
    out = run("filter", ws, "--out", tmp_path / "all.parquet")
    assert "kept 3 of 3" in out.output
    refused = CliRunner().invoke(cli, ["filter", str(ws), "--out", str(tmp_path / "x.parquet"),
                                       "--exclude-synthetic"])  # fmt: skip
    assert refused.exit_code == 1 and "audit provenance" in refused.output
    run("provenance", ws, "--report-dir", tmp_path / "r")
    out = run("filter", ws, "--out", tmp_path / "real.parquet", "--exclude-synthetic")
    assert "kept 0 of 3" in out.output and "synthetic 3" in out.output
    assert pq.read_table(tmp_path / "real.parquet").num_rows == 0
    removed = json.loads((tmp_path / "real.removed.json").read_text())
    assert removed["synthetic_removed"] == 3


def test_c2pa_python_validates_each_manifest(model, generated):
    sha = sha256_file(model / "model.safetensors")
    table = pq.read_table(generated / "generated.parquet").to_pylist()
    ca = (model / "credentials" / "local-ca.pem").read_text()
    assert len(table) == 4
    for row, path in zip(table, pngs(generated), strict=True):
        with c2pa.Reader("image/png", io.BytesIO(path.read_bytes())) as reader:
            assert reader.get_validation_state() == "Valid"  # signature valid ...
            failures = reader.get_validation_results()["activeManifest"]["failure"]
            assert [f["code"] for f in failures] == ["signingCredential.untrusted"]  # ... CA not
            manifest = reader.get_active_manifest()
        assert manifest["label"] == row["c2pa_manifest"]
        assert manifest["signature_info"]["common_name"] == certs.SIGNER_NAME
        assertions = {a["label"]: a["data"] for a in manifest["assertions"]}
        (action,) = assertions["c2pa.actions.v2"]["actions"]
        assert action["action"] == "c2pa.created"
        assert action["digitalSourceType"] == DST + "trainedAlgorithmicMedia"
        assert action["softwareAgent"]["sha256"] == sha
        entries = assertions["cawg.training-mining"]["entries"]
        assert entries == {u: {"use": "notAllowed"} for u in credentials.TRAINING_MINING_USES}
        # With the local CA as a trust anchor the same signature is trusted: the chain is sound.
        assert credentials.read(path.read_bytes(), trust_anchors=ca).state == "trusted"
        # generated.parquet records what was embedded.
        assert row["digital_source_type"] == DST + "trainedAlgorithmicMedia"
        assert row["c2pa_signer"] == f"O={certs.ORGANISATION},CN={certs.SIGNER_NAME}"
        assert row["c2pa_trusted"] is False and row["c2pa_local_certificate"] is True
        assert row["c2pa_state"] == "untrusted" and row["training_mining"] == "notAllowed"
    assert (model / "credentials" / "signer-key.pem").stat().st_mode & 0o077 == 0
    assert (model / "credentials").stat().st_mode & 0o077 == 0
    assert (model / "credentials" / ".gitignore").read_text().splitlines()[-1] == "*"


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed (apt-get install libimage-exiftool-perl)")  # fmt: skip
def test_exiftool_reads_the_xmp(generated):
    out = subprocess.run(
        [
            "exiftool",
            "-j",
            "-n",
            "-XMP-iptcExt:DigitalSourceType",
            "-XMP-plus:DataMining",
            *map(str, pngs(generated)),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        check=True,  # fmt: skip
    )
    found = json.loads(out.stdout)
    assert len(found) == 4
    for item in found:
        assert item["DigitalSourceType"] == DST + "trainedAlgorithmicMedia"
        assert item["DataMining"] == "http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED"


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        out.append((data[pos + 4 : pos + 8], data[pos : pos + 12 + n]))
        pos += 12 + n
    return out


def tamper(data: bytes) -> bytes:
    """The same PNG, manifest and XMP kept, with one pixel changed (IDAT re-encoded)."""
    pixels = Image.open(io.BytesIO(data)).convert("RGB")
    pixels.putpixel((0, 0), tuple(255 - c for c in pixels.getpixel((0, 0))))
    idat = b"".join(c for t, c in _chunks(encode(pixels)) if t == b"IDAT")
    kept = [c for t, c in _chunks(data) if t != b"IDAT"]
    at = next(i for i, (t, _) in enumerate(_chunks(data)) if t == b"IDAT")
    return data[:8] + b"".join(kept[:at]) + idat + b"".join(kept[at:])


def test_changed_pixels_read_as_tampered(generated, make_workspace):
    original = pngs(generated)[0].read_bytes()
    changed = tamper(original)
    assert Image.open(io.BytesIO(changed)).getpixel((0, 0)) != Image.open(
        io.BytesIO(original)
    ).getpixel((0, 0))
    creds = credentials.read(changed)
    assert creds.state == "tampered" and "assertion.dataHash.mismatch" in creds.failures
    assert credentials.read(original).state == "untrusted"
    # The stage still counts the mark, and says the manifest was tampered with.
    ws = make_workspace([original, changed, encode(synthetic_image(1))])
    provenance.detect(ws.root)
    got = (
        ws.connect()
        .execute("SELECT row_id, synthetic, c2pa_state, evidence FROM synthetic ORDER BY row_id")
        .fetchall()
    )
    assert [(r, s, c) for r, s, c, _ in got] == [
        (0, True, "untrusted"),
        (1, True, "tampered"),
        (2, False, None),
    ]
    assert "assertion.dataHash.mismatch" in got[1][3]
    # ... and so does the consent evidence of the training-mining assertion.
    (c2pa_sig,) = [s for s in signature.annotate(embedded.signals(changed), changed)
                   if s.signal == "c2pa"]  # fmt: skip
    assert "signature tampered" in c2pa_sig.location
    assert c2pa_sig.state == "reserved"  # a reservation counts whatever its signature
    plain = encode(synthetic_image(1))
    assert signature.annotate(embedded.signals(plain), plain) == embedded.signals(plain)


def _xmp_png(value: str, form: str = "attribute") -> bytes:
    prop = {
        "attribute": f'<rdf:Description Iptc4xmpExt:DigitalSourceType="{value}"/>',
        "element": "<rdf:Description><Iptc4xmpExt:DigitalSourceType>"
        f"{value}</Iptc4xmpExt:DigitalSourceType>\n  </rdf:Description>",
        "resource": f'<rdf:Description><Iptc4xmpExt:DigitalSourceType rdf:resource="{value}"/>'
        "</rdf:Description>",
    }[form]
    packet = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
        f'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">{prop}</rdf:RDF></x:xmpmeta>'
    ).encode()
    return marking.with_xmp(encode(synthetic_image(3, 24)), packet)


@pytest.mark.parametrize(
    ("value", "form", "synthetic"),
    [
        (DST + "trainedAlgorithmicMedia", "attribute", True),
        ("trainedAlgorithmicMedia", "attribute", True),  # the bare code
        (DST + "compositeSynthetic", "element", True),
        ("algorithmicMedia", "resource", True),
        (DST + "compositeWithTrainedAlgorithmicMedia", "attribute", True),
        (DST + "digitalCapture", "attribute", False),
        ("digitalCapture", "element", False),
    ],
)
def test_xmp_source_types(value, form, synthetic):
    got = provenance.marks(_xmp_png(value, form))
    full = value if value.startswith("http") else DST + value
    assert got["xmp_source_type"] == full and got["digital_source_type"] == full
    assert got["synthetic"] is synthetic
    assert got["mark"] == ("iptc-xmp" if synthetic else "none")


def test_xmp_in_jpeg_and_webp_and_none():
    packet = b'<x:xmpmeta><rdf:Description Iptc4xmpExt:DigitalSourceType="compositeSynthetic"/></x:xmpmeta>'
    for fmt in ("JPEG", "WEBP"):
        data = encode(synthetic_image(2, 24), fmt, xmp=packet)
        assert provenance.marks(data)["digital_source_type"] == DST + "compositeSynthetic", fmt
    plain = provenance.marks(encode(synthetic_image(2, 24)))
    assert plain["synthetic"] is False and plain["c2pa_state"] is None
    assert plain["evidence"] == "no digital source type, no C2PA manifest"


def test_c2pa_action_alone_marks_a_jpeg(tmp_path):
    """A JPEG whose only mark is a C2PA action (compositeSynthetic), signed by someone else."""
    ca, cert, key = certs.make_chain()
    manifest = {
        "claim_generator_info": [{"name": "another tool", "version": "1"}],
        "assertions": [
            {
                "label": "c2pa.actions.v2",
                "data": {
                    "actions": [
                        {"action": "c2pa.created", "digitalSourceType": DST + "compositeSynthetic"}
                    ]
                },  # fmt: skip
            }
        ],
    }
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(b"es256", cert + ca, key, None))
    out = io.BytesIO()
    with c2pa.Builder.from_json(json.dumps(manifest)) as b:
        b.sign(signer, "image/jpeg", io.BytesIO(encode(synthetic_image(5), "JPEG")), out)
    got = provenance.marks(out.getvalue())
    assert got["synthetic"] is True and got["mark"] == "c2pa" and got["xmp_source_type"] is None
    assert got["c2pa_source_type"] == DST + "compositeSynthetic"
    assert got["c2pa_state"] == "untrusted"
    assert provenance.marks(out.getvalue(), trust_anchors=ca.decode())["c2pa_state"] == "trusted"


def test_unreadable_and_missing_images_are_unknown(make_workspace):
    ws = make_workspace([None, encode(synthetic_image(0))])
    # row 1's file disappears after ingest: an error row, synthetic unknown
    Path(
        ws.connect().execute("SELECT image_path FROM metadata WHERE row_id = 1").fetchone()[0]
    ).unlink()
    s = provenance.detect(ws.root)
    assert s["unknown"] == 2 and s["synthetic"] == 0
    errors = ws.connect().execute("SELECT row_id, stage FROM errors").fetchall()
    assert errors == [(1, "provenance")]


def test_user_certificate_and_bad_arguments(model, tmp_path):
    ca, cert, key = certs.make_chain()
    (tmp_path / "chain.pem").write_bytes(cert + ca)
    (tmp_path / "key.pem").write_bytes(key)
    out = run("generate", model, "--n", 1, "--out", tmp_path / "g", "--steps", 2,
              "--sign-cert", tmp_path / "chain.pem", "--sign-key", tmp_path / "key.pem",
              "--training-mining", "constrained")  # fmt: skip
    assert "your certificate" in out.output
    row = pq.read_table(tmp_path / "g" / "generated.parquet").to_pylist()[0]
    assert row["c2pa_local_certificate"] is False and row["training_mining"] == "constrained"
    only = CliRunner().invoke(cli, ["generate", str(model), "--out", str(tmp_path / "h"),
                                    "--sign-cert", str(tmp_path / "chain.pem")])  # fmt: skip
    assert only.exit_code == 1 and "go together" in only.output
    # A CA certificate cannot sign claims: refused before anything is sampled or written.
    (tmp_path / "ca.pem").write_bytes(ca)
    bad = CliRunner().invoke(cli, ["generate", str(model), "--out", str(tmp_path / "i"),
                                   "--sign-cert", str(tmp_path / "ca.pem"),
                                   "--sign-key", str(tmp_path / "key.pem")])  # fmt: skip
    assert bad.exit_code == 1 and "end-entity certificate" in bad.output
    assert not (tmp_path / "i").exists()


def test_model_card_states_how_outputs_are_marked(model, make_workspace, tmp_path):
    ws = make_workspace([encode(synthetic_image(0))])
    info = cards.build_model_card(ws.root, model_dir=model, out=tmp_path / "MODEL_CARD.md")
    text = Path(info["out"]).read_text()
    assert "### How outputs are marked" in text
    assert DST + "trainedAlgorithmicMedia" in text and "cawg.training-mining" in text
    assert "untrusted" in text


def test_with_xmp_makes_a_valid_png_chunk():
    data = marking.with_xmp(encode(synthetic_image(0, 24)), b"<x:xmpmeta/>")
    (chunk,) = [c for t, c in _chunks(data) if t == b"iTXt"]
    body = chunk[8:-4]
    assert zlib.crc32(b"iTXt" + body).to_bytes(4, "big") == chunk[-4:]
    assert Image.open(io.BytesIO(data)).info["XML:com.adobe.xmp"] == "<x:xmpmeta/>"


def test_share_per_source_in_a_mixed_dataset(generated, make_workspace, tmp_path):
    """3 real + 1 generated image on a.example.com, 2 generated on b.example.org."""
    from audit.reports import provenance as report

    fake = [p.read_bytes() for p in pngs(generated)[:3]]
    real = [encode(synthetic_image(i)) for i in range(3)]
    images = [real[0], fake[0], real[1], fake[1], real[2], fake[2]]
    hosts = ["a.example.com", "b.example.org", "a.example.com", "b.example.org"] + [
        "a.example.com"
    ] * 2
    urls = [f"https://{h}/{i}.png" for i, h in enumerate(hosts)]
    ws = make_workspace(images, urls=urls)
    s = provenance.detect(ws.root)
    assert s["synthetic"] == 3 and s["by_mark"] == {"iptc-xmp+c2pa": 3}
    page = report.write(ws.root, tmp_path / "r").read_text()
    assert "3 of 6 rows (50.0%)" in page
    assert "| b.example.org | 2 | 2 | 100 |" in page and "| a.example.com | 4 | 1 | 25 |" in page


def test_hostile_bytes_never_crash_the_reader(generated):
    data = pngs(generated)[0].read_bytes()
    at = data.find(b"caBX")
    assert credentials.read(b"not an image but it says c2pa") is None  # format c2pa cannot read
    cut = credentials.read(data[: at + 400])  # manifest store cut short
    assert cut.state == "unreadable" and "PNG" in cut.error
    garbled = bytearray(data)
    garbled[at + 200 : at + 260] = b"\x00" * 60  # inside the store
    assert credentials.read(bytes(garbled)).state == "unreadable"
    got = provenance.marks(bytes(garbled))
    assert got["synthetic"] is True and got["mark"] == "iptc-xmp"  # the XMP still says so
    assert got["c2pa_state"] == "unreadable" and "C2PA unreadable" in got["evidence"]


def test_hostile_xmp_is_bounded():
    """Megabytes of whitespace after the property name cost linear time, and find nothing."""
    import time

    started = time.perf_counter()
    for body in (b" " * 2_000_000, b">" + b" " * 2_000_000, b"=" + b"\t" * 2_000_000):
        assert credentials.source_types_in_xmp(b"DigitalSourceType" + body) == []
    assert time.perf_counter() - started < 5  # quadratic backtracking would take hours here


@pytest.mark.parametrize(
    ("state", "failures", "expected"),
    [
        ("Trusted", [], "trusted"),
        ("Valid", ["signingCredential.untrusted"], "untrusted"),
        ("Valid", [], "untrusted"),  # trust not checked: not trusted either
        ("Invalid", ["signingCredential.untrusted", "assertion.dataHash.mismatch"], "tampered"),
        ("Invalid", ["claimSignature.mismatch"], "tampered"),
        ("Invalid", ["assertion.hashedURI.mismatch"], "tampered"),
        ("Invalid", ["signingCredential.expired"], "invalid"),
        ("Invalid", ["claimSignature.missing", "signingCredential.untrusted"], "invalid"),
    ],
)
def test_validation_codes_map_to_one_state(state, failures, expected):
    """c2pa validation_status codes (C2PA 2.x, section 15) -> credentials.STATES."""
    store = {
        "active_manifest": "urn:c2pa:x",
        "manifests": {"urn:c2pa:x": {"signature_info": {"common_name": "Jane", "issuer": "Org"}}},
        "validation_state": state,
        "validation_results": {"activeManifest": {"failure": [{"code": c} for c in failures]}},
    }
    got = credentials._credentials(store)
    assert got.state == expected and got.failures == failures
    assert got.summary.startswith(f"signature {expected}, signed by Jane (Org)")
    legacy = {k: v for k, v in store.items() if k != "validation_results"}
    legacy["validation_status"] = [{"code": c} for c in failures]
    assert credentials._credentials(legacy).state == expected
