"""Learned copy descriptors: a tiny TorchScript model saved by the test, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from audit import descriptors
from audit.errors import AuditError


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("desc") / "tiny.torchscript.pt"
    torch.jit.script(Tiny().eval()).save(str(path))
    return path


def test_torchscript_descriptor_loads_and_embeds(tiny_model):
    d = descriptors.load(tiny_model, threshold=0.7, size=64)
    assert (d.kind, d.dim, d.size, d.threshold) == ("torchscript", 32, 64, 0.7)
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)) for _ in range(3)]
    v = d.embed(imgs + [imgs[0].resize((100, 140))])
    assert v.shape == (4, 32) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[3] > v[0] @ v[1]  # a rescaled copy is closer than another picture
    assert d.info["name"] == "tiny.torchscript.pt"


def test_missing_or_broken_files_say_what_to_pass(tmp_path, tiny_model):
    with pytest.raises(AuditError, match="does not exist: pass a TorchScript"):
        descriptors.load(tmp_path / "sscd_disc_mixup.torchscript.pt")
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(AuditError, match="is not a TorchScript model"):
        descriptors.load(bad)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x01")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        with pytest.raises(AuditError, match="onnxruntime is not installed"):
            descriptors.load(onnx)
    with pytest.raises(AuditError, match="at least 16 pixels"):
        descriptors.load(tiny_model, size=8)


def test_match_with_a_descriptor_records_its_vote(tiny_model, tmp_path):
    """The descriptor votes beside the verifier; its similarity lands in every row."""
    import pandas as pd
    from click.testing import CliRunner
    from conftest import build_workspace, encode
    from test_memorisation_check import sample_images

    from audit import embeddings, hashes, knn
    from audit.cli import cli

    train = sample_images(8)
    ws = build_workspace(tmp_path / "train", [encode(im) for im in train])
    hashes.compute(ws.root, workers=1)
    embeddings.compute(ws.root, model="tiny", pretrained="none", workers=0)
    knn.build(ws.root)
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "copy.png").write_bytes(encode(train[2].resize((90, 90))))
    args = ["match", str(gen), "--against", str(ws.root), "--report-dir", str(tmp_path / "r")]
    r = CliRunner().invoke(
        cli, [*args, "--descriptor", str(tiny_model), "--descriptor-threshold", "0.99"]
    )
    assert r.exit_code == 0, r.output
    m = pd.read_parquet(ws.path("memorisation/gen/matches.parquet"))
    assert m.verdict.tolist() == ["copy"] and m.train_row_id.tolist() == [2]
    assert m.descriptor_similarity.iloc[0] > 0.9 and "descriptor" in m.evidence.iloc[0]
    missing = CliRunner().invoke(cli, [*args, "--descriptor", str(tmp_path / "sscd.pt")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
