"""The UNet at tiny size: shapes, embeddings, conditioning, and that it can learn (overfit one batch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from audit import diffusion
from audit.diffusion.model import ModelConfig, UNet, timestep_embedding
from audit.errors import AuditError

TINY = ModelConfig(resolution=16, base_channels=8, channel_mults=(1, 2), attention_resolution=8)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_timestep_embedding_golden():
    e = timestep_embedding(torch.tensor([0, 10]), 8)
    assert e.shape == (2, 8)
    assert torch.equal(e[0], torch.tensor([0, 0, 0, 0, 1, 1, 1, 1.0]))
    freqs = [10000 ** (-k / 4) for k in range(4)]
    expected = [math.sin(10 * f) for f in freqs] + [math.cos(10 * f) for f in freqs]
    assert torch.allclose(e[1], torch.tensor(expected), atol=1e-5)


@pytest.mark.parametrize(
    "cfg",
    [
        TINY,
        ModelConfig(resolution=32, base_channels=8, num_classes=3),
        ModelConfig(resolution=64, base_channels=8, channel_mults=(1, 2, 2, 2)),
    ],
)
def test_unet_keeps_the_shape_and_starts_at_zero(cfg):
    torch.manual_seed(0)
    model = UNet(cfg)
    n_attn = sum(isinstance(m, diffusion.model.AttentionBlock) for m in model.modules())
    assert n_attn >= 2  # the middle one plus at least one at the attention resolution
    x = torch.randn(2, 3, cfg.resolution, cfg.resolution)
    out = model(x, torch.tensor([0, 999]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised output conv: "no noise" at first


def test_bad_resolution_is_an_audit_error():
    with pytest.raises(AuditError, match="not divisible"):
        UNet(ModelConfig(resolution=30, channel_mults=(1, 2, 2)))


def test_class_conditioning_and_the_no_class_token():
    torch.manual_seed(0)
    model = UNet(ModelConfig(resolution=16, base_channels=8, channel_mults=(1, 2), num_classes=3))
    torch.nn.init.normal_(model.conv_out.weight)  # make outputs depend on the input
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([5, 5, 5])
    none = model(x, t, None)
    assert torch.equal(none, model(x, t, torch.tensor([3, 3, 3])))  # None == index num_classes
    assert not torch.allclose(none, model(x, t, torch.tensor([0, 1, 2])))
    assert model.class_emb.num_embeddings == 4


def test_unet_overfits_one_batch_in_seconds():
    """A fixed batch (fixed t and noise): the eps-MSE must fall far below its start."""
    torch.manual_seed(0)
    model = UNet(TINY)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 16, 16, generator=gen) * 2 - 1
    t = torch.tensor([50, 200, 400, 700])
    noise = torch.randn(x0.shape, generator=gen)
    schedule = diffusion.Schedule()
    xt = schedule.q_sample(x0, t, noise)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        loss = F.mse_loss(model(xt, t), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(1.0, abs=0.15)  # zero init: the loss starts at E[eps^2]
    assert losses[-1] < 0.2 * losses[0], losses[::20]


def test_per_example_loss_is_reproducible_and_shaped():
    torch.manual_seed(0)
    model = UNet(TINY).eval()
    torch.nn.init.normal_(model.conv_out.weight, std=0.01)
    schedule = diffusion.Schedule()
    imgs = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    a = diffusion.per_example_loss(model, schedule, imgs, timesteps=(10, 500), seed=3)
    b = diffusion.per_example_loss(model, schedule, imgs, timesteps=(10, 500), seed=3, batch_size=2)
    assert a.shape == (5,) and np.allclose(a, b)
    full = diffusion.per_example_loss(
        model, schedule, imgs, timesteps=(10, 500), seed=3, reduce="none"
    )
    assert full.shape == (5, 2) and np.allclose(full.mean(1), a)
    # One image scored alone gets the same loss as inside a batch (fixed noise per timestep).
    assert np.allclose(
        diffusion.per_example_loss(model, schedule, imgs[2:3], timesteps=(10, 500), seed=3), a[2]
    )
    with pytest.raises(AuditError, match="needs 16x16"):
        diffusion.per_example_loss(model, schedule, np.zeros((1, 32, 32, 3), np.uint8))
