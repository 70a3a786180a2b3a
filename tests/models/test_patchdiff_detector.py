"""Patch-level detector (Table 8), DAE head (Table 9), map alignment and blur."""

import pytest
import torch
import torch.nn.functional as F

from anomaly_bench.models.patchdiff.detector import (
    DAEHead,
    PatchDetector,
    gaussian_blur,
    patch_map_to_image,
)
from anomaly_bench.models.patchdiff.fusion import PIXEL_STD_FLOOR
from anomaly_bench.models.patchdiff.torch_model import DetectorSpec, PatchDiffCategoryModel


def test_detector_matches_table_8():
    det = PatchDetector()
    convs = [m for m in det.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 256, 256, 256, 1]
    assert [c.kernel_size[0] for c in convs] == [4, 4, 3, 3, 3, 1, 1, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 1, 1, 1, 1, 1, 1]
    assert all(c.padding == (0, 0) for c in convs)
    n_params = sum(p.numel() for p in det.parameters())
    assert 2.85e6 < n_params < 2.95e6  # "around 2.9 million"
    assert det(torch.zeros(2, 5, 34, 34)).shape == (2, 1, 1)
    assert det(torch.zeros(1, 5, 256, 256)).shape == (1, 56, 56)


def test_detector_receptive_field_is_34_with_stride_4():
    det = PatchDetector(width=0.125).double()
    for p in det.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, 5, 70, 70, dtype=torch.float64, requires_grad=True)
    out = det(x)
    assert out.shape[-1] == 10  # (70 - 34) / 4 + 1
    for cell in (0, 3):
        x.grad = None
        # a ReLU network can have dead units for one input; sum over two cells' worth of checks
        out[0, cell, cell].backward(retain_graph=True)
        hit = x.grad[0].abs().sum(0) > 0
        rows = torch.nonzero(hit.any(1)).flatten()
        assert rows.min() >= 4 * cell and rows.max() <= 4 * cell + 33


def test_dae_head_shape_and_size():
    head = DAEHead()
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [256, 256, 256, 5780]
    assert all(c.kernel_size == (1, 1) for c in convs)
    assert head(torch.zeros(3, 256, 1, 1)).shape == (3, 5, 34, 34)
    assert head(torch.zeros(3, 256)).shape == (3, 5, 34, 34)


def test_patch_map_lands_on_the_window_centre():
    logit = torch.zeros(1, 56, 56)
    logit[0, 10, 20] = 1.0
    placed = patch_map_to_image(logit, (256, 256))
    assert placed.shape == (1, 256, 256)
    peak = torch.nonzero(placed[0] == placed[0].max()).float().mean(0)
    # window (10, 20) covers rows 40..73 and cols 80..113: centre 56.5, 96.5
    assert abs(peak[0].item() - 56.5) <= 1.0 and abs(peak[1].item() - 96.5) <= 1.0


def test_gaussian_blur_preserves_mass_and_smooths():
    maps = torch.zeros(1, 41, 41)
    maps[0, 20, 20] = 1.0
    blurred = gaussian_blur(maps, sigma=2.0)
    assert blurred.shape == maps.shape
    assert abs(blurred.sum().item() - 1.0) < 1e-4
    assert blurred.max() < 0.1
    assert torch.equal(gaussian_blur(maps, 0.0), maps)


def test_multi_detector_scoring_uses_each_input_size():
    specs = [DetectorSpec(256, [5, 9, 13]), DetectorSpec(128, [5, 9, 13]), DetectorSpec(64, [9, 13, 17])]
    assert [s.name for s in specs] == ["level34", "level68", "level136"]
    model = PatchDiffCategoryModel(specs, generator_channels=4, detector_width=0.0625)
    assert model.levels == [5, 9, 13, 17]
    images = torch.rand(2, 3, 256, 256) * 2 - 1
    placed = model.placed_maps(images)
    assert [m.shape for m, _ in placed] == [(2, 256, 256), (2, 128, 128), (2, 64, 64)]
    out = model(images)
    assert out.anomaly_map.shape == (2, 256, 256) and out.pred_score.shape == (2,)
    model.compute_fusion_stats(images)
    assert bool(model.fusion_ready)
    standardized = model.score(images, map_fusion="standardized_sum")
    assert torch.isfinite(standardized.anomaly_map).all() and torch.isfinite(standardized.pred_score).all()


def test_pixel_statistics_and_pixel_fusion_by_hand():
    specs = [DetectorSpec(64, [5], "a"), DetectorSpec(48, [5], "b")]
    torch.manual_seed(0)
    model = PatchDiffCategoryModel(specs, generator_channels=4, detector_width=0.0625).eval()
    with torch.no_grad():  # random init gives near-constant logits; spread them well above the std floor
        for detector in model.detectors:
            detector.classifier.weight.mul_(1e4)
    normals = torch.rand(5, 3, 64, 80) * 2 - 1
    model.compute_fusion_stats(normals, chunk=2)  # chunks must not change the statistics
    aligned = model.placed_maps(normals)
    for d, (maps, _) in enumerate(aligned):
        mean, std = model.pixel_stats(d)
        assert mean.shape == (specs[d].input_size,) * 2
        torch.testing.assert_close(mean, maps.mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(std, maps.std(0), rtol=1e-3, atol=1e-5)  # unbiased, over images
        assert std.min() > 10 * PIXEL_STD_FLOOR
    test = torch.rand(2, 3, 64, 80) * 2 - 1
    expected_map = torch.zeros(2, 64, 80)
    expected_max = torch.zeros(2)
    for d, (maps, _) in enumerate(model.placed_maps(test)):
        mean, std = model.pixel_stats(d)
        z = (maps - mean) / std
        expected_max += z.flatten(1).amax(1)
        expected_map += F.interpolate(z[:, None], size=(64, 80), mode="bilinear", align_corners=False)[:, 0]
    out = model.score(test, blur_sigma=0.0, map_fusion="pixel_standardized_sum", image_score="sum_of_max")
    torch.testing.assert_close(out.anomaly_map, expected_map, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.pred_score, expected_max, rtol=1e-4, atol=1e-4)
    score = model.score(test, blur_sigma=0.0, map_fusion="pixel_standardized_sum", image_score="max_of_map").pred_score
    torch.testing.assert_close(score, expected_map.flatten(1).amax(1), rtol=1e-4, atol=1e-4)
    state = model.state_dict()
    assert "pixel_stats_0" in state and state["pixel_stats_1"].shape == (2, 48, 48)


def test_global_statistics_and_standardized_sum_by_hand():
    specs = [DetectorSpec(64, [5], "a"), DetectorSpec(48, [5], "b")]
    torch.manual_seed(1)
    model = PatchDiffCategoryModel(specs, generator_channels=4, detector_width=0.0625).eval()
    with torch.no_grad():  # spread the near-constant random logits (statistics far from neutral)
        for detector in model.detectors:
            detector.classifier.weight.mul_(1e4)
    normals = torch.rand(5, 3, 64, 80) * 2 - 1
    model.compute_fusion_stats(normals, chunk=3)
    for d, (maps, peak) in enumerate(model.placed_maps(normals)):
        on_image = F.interpolate(maps[:, None], size=(64, 80), mode="bilinear", align_corners=False)[:, 0].double()
        expected = torch.stack([on_image.mean(), on_image.std(unbiased=False), peak.double().mean(),
                                peak.double().std()]).float()
        torch.testing.assert_close(model.fusion_stats[d], expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(model.fusion_stats[d], torch.tensor([0.0, 1.0, 0.0, 1.0]), atol=1e-2)
    test = torch.rand(2, 3, 64, 80) * 2 - 1
    expected_map, expected_sum = torch.zeros(2, 64, 80), torch.zeros(2)
    for d, (maps, peak) in enumerate(model.placed_maps(test)):
        map_mean, map_std, max_mean, max_std = model.fusion_stats[d]
        on_image = F.interpolate(maps[:, None], size=(64, 80), mode="bilinear", align_corners=False)[:, 0]
        expected_map += (on_image - map_mean) / map_std
        expected_sum += (peak - max_mean) / max_std
    out = model.score(test, blur_sigma=0.0, map_fusion="standardized_sum", image_score="sum_of_max")
    torch.testing.assert_close(out.anomaly_map, expected_map, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.pred_score, expected_sum, rtol=1e-4, atol=1e-4)
    raw = model.score(test, blur_sigma=0.0, map_fusion="sum", image_score="sum_of_max")
    assert not torch.allclose(raw.anomaly_map, out.anomaly_map, atol=1e-2)  # the statistics did something


def test_detector_spec_errors_are_clear():
    with pytest.raises(ValueError, match="input_size"):
        DetectorSpec(20, [5])
    with pytest.raises(ValueError, match="unknown keys"):
        DetectorSpec.parse({"input_size": 64, "levls": [5]}, "model.detectors[0]")
