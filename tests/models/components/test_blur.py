"""The shared Gaussian blur: known answers."""

from __future__ import annotations

import math

import torch

from anomaly_bench.models.components.blur import gaussian_blur, gaussian_kernel1d, gaussian_kernel_size


def test_kernel_size_and_taps() -> None:
    assert gaussian_kernel_size(6.0) == 49  # kornia's size for sigma 6 in GLAD's official scoring
    assert gaussian_kernel_size(1.0, truncate=3.0) == 7
    taps = gaussian_kernel1d(1.0, 3)
    expected = torch.tensor([math.exp(-0.5), 1.0, math.exp(-0.5)])
    assert torch.allclose(taps, expected / expected.sum())


def test_delta_spreads_into_the_outer_product_of_the_taps() -> None:
    spike = torch.zeros(1, 11, 11)
    spike[0, 5, 5] = 1.0
    taps = gaussian_kernel1d(1.5, 7)
    assert torch.allclose(gaussian_blur(spike, 1.5, 7)[0, 2:9, 2:9], torch.outer(taps, taps), atol=1e-7)


def test_constant_maps_are_unchanged_and_sigma_zero_is_a_no_op() -> None:
    flat = torch.full((2, 6, 6), 3.0)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat)  # replicate padding on a map smaller than the kernel
    maps = torch.rand(2, 5, 5)
    assert gaussian_blur(maps, 0.0) is maps


def test_blur_runs_in_float32_under_autocast() -> None:
    maps = torch.rand(1, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gaussian_blur(maps, 1.0)
    assert out.dtype == torch.float32
    assert torch.allclose(out, gaussian_blur(maps, 1.0))
