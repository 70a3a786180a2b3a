"""PatchDiff generator: exact receptive field, global tiny noise, samplers."""

import math

import pytest
import torch

from anomaly_bench.models.patchdiff.generator import (
    PatchDiff,
    PatchDiffDenoiser,
    coordinate_map,
    encode_coordinates,
)


def _randomise(module: torch.nn.Module) -> None:
    """The head starts at zero (no gradient anywhere); give every weight a generic value."""
    torch.manual_seed(0)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)


def _influence_box(level: int, size: int, coord_frequencies: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    net = PatchDiffDenoiser(level, channels=8, coord_frequencies=coord_frequencies).double()
    _randomise(net)
    x = torch.randn(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    coords = coordinate_map(size, size, dtype=torch.float64)[None].clone().requires_grad_(True)
    out = net(x, torch.tensor([500]), coords)
    centre = size // 2
    out[0, :, centre, centre].sum().backward()
    return (x.grad[0].abs().sum(0) > 0), (coords.grad[0].abs().sum(0) > 0)


@pytest.mark.parametrize("level,coord_frequencies", [(5, 6), (9, 6), (13, 6), (17, 6), (9, 0)])
def test_receptive_field_is_exactly_level_by_level(level, coord_frequencies):
    size = level + 14
    influence, coord_influence = _influence_box(level, size, coord_frequencies)
    rows = torch.nonzero(influence.any(1)).flatten()
    cols = torch.nonzero(influence.any(0)).flatten()
    assert rows.max() - rows.min() + 1 == level
    assert cols.max() - cols.min() + 1 == level
    centre, r = size // 2, level // 2
    # every pixel inside the window matters (not only its bounding box), none outside
    expected = torch.zeros_like(influence)
    expected[centre - r: centre + r + 1, centre - r: centre + r + 1] = True
    assert torch.equal(influence, expected)
    assert torch.equal(coord_influence, expected)


def test_invalid_level_is_rejected():
    with pytest.raises(ValueError, match="odd"):
        PatchDiffDenoiser(6)
    with pytest.raises(ValueError, match="coord_frequencies"):
        PatchDiffDenoiser(5, coord_frequencies=-1)


def test_coordinate_encoding_known_values():
    coords = torch.tensor([0.5, -0.25]).view(1, 2, 1, 1)  # x = 0.5, y = -0.25 at one pixel
    enc = encode_coordinates(coords, 2)[0, :, 0, 0]
    # layout: x, y, sin(pi x), sin(2 pi x), sin(pi y), sin(2 pi y), then the cosines in that order
    angles = torch.tensor([math.pi * 0.5, 2 * math.pi * 0.5, -math.pi * 0.25, -2 * math.pi * 0.25])
    expected = torch.cat([coords.flatten(), torch.sin(angles), torch.cos(angles)])
    assert enc.shape == (2 + 4 * 2,)
    assert torch.allclose(enc, expected, atol=1e-6)
    raw = coordinate_map(4, 5)[None]
    assert encode_coordinates(raw, 0) is raw  # 0 octaves = the paper's raw 2-channel map
    assert PatchDiffDenoiser(5, channels=8, coord_frequencies=0).stem.in_channels == 5
    assert PatchDiffDenoiser(5, channels=8, coord_frequencies=6).stem.in_channels == 3 + 2 * 13


def test_global_noise_is_per_image_and_constant_over_pixels():
    model = PatchDiff(level=5, channels=8, global_noise_std=0.02)
    seen = {}

    def capture(module, args):
        seen["input"] = args[0].detach().clone()

    model.denoiser.register_forward_pre_hook(capture)
    # abar_t = 1 and x0 = 0: the denoiser's input is exactly eps_g
    model.alphas_cumprod.fill_(1.0)
    loss = model.training_loss(torch.zeros(512, 3, 6, 7))
    eps_g = seen["input"]
    assert torch.allclose(eps_g, eps_g[:, :, :1, :1].expand_as(eps_g))  # constant over pixels
    per_image = eps_g[:, :, 0, 0]
    assert per_image.std(0).min() > 0.015 and per_image.std(0).max() < 0.025  # sigma_g = 0.02
    assert (per_image[0] - per_image[1]).abs().max() > 0  # differs between images
    # zero-initialised head predicts 0, so the loss is E[eps_1^2] (target excludes eps_g)
    assert abs(loss.item() - 1.0) < 0.05


def test_sampling_has_no_global_noise_and_returns_images():
    model = PatchDiff(level=5, channels=8)
    torch.manual_seed(0)
    for sampler in ("ddpm", "ddim"):
        images = model.sample(2, 12, 10, sampler=sampler, num_inference_steps=4)
        assert images.shape == (2, 3, 12, 10)
        assert images.min() >= -1 and images.max() <= 1
        assert torch.isfinite(images).all()
    with pytest.raises(ValueError, match="sampler"):
        model.sample(1, 8, 8, sampler="euler")


def test_training_reduces_loss_on_a_constant_image():
    torch.manual_seed(0)
    model = PatchDiff(level=5, channels=8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x0 = torch.full((4, 3, 8, 8), 0.5)
    first = [model.training_loss(x0).item() for _ in range(5)]
    for _ in range(40):
        loss = model.training_loss(x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = [model.training_loss(x0).item() for _ in range(5)]
    assert sum(last) < 0.8 * sum(first)
