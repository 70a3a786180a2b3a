"""The exact sort and the binned counting on a GPU give the CPU's numbers (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_bench.metrics.ground_truth import ground_truth_from_mask
from anomaly_bench.metrics.pixel import BinningConfig, PixelImage, evaluate_pixels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_cuda_path_equals_cpu_path(mode):
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 64, 64), np.uint8)
    masks[:3, 10:30, 5:20] = 255
    maps = (rng.normal(size=masks.shape) + (masks != 0)).astype(np.float32)
    images = [PixelImage(torch.from_numpy(m), ground_truth_from_mask(g)) for m, g in zip(maps, masks)]
    operating = (0.5, float(np.quantile(maps, 0.99)))
    cpu = evaluate_pixels(images, None, BinningConfig(mode=mode), "cpu", operating)["all"]
    gpu = evaluate_pixels(images, None, BinningConfig(mode=mode), "cuda", operating)["all"]
    assert gpu.operating == cpu.operating and len(cpu.operating) == 2
    assert gpu.auroc() == pytest.approx(cpu.auroc(), abs=1e-12)
    assert gpu.aupro() == pytest.approx(cpu.aupro(), abs=1e-12)
    assert gpu.average_precision() == pytest.approx(cpu.average_precision(), abs=1e-12)
