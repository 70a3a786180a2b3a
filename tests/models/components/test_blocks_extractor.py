"""Fusion blocks keep shape; the feature extractor is frozen, aligned and loads local weights."""

from __future__ import annotations

import pytest
import torch

from anomaly_bench.models.components.blocks import (
    BasicResidualBlock,
    InvertedResidualSE,
    fusion_network,
)
from anomaly_bench.models.components.feature_extractor import TimmFeatureExtractor


def test_blocks_preserve_shape_and_have_bias_free_convs():
    x = torch.randn(2, 12, 5, 5)
    for block in (InvertedResidualSE(12, 24), BasicResidualBlock(12)):
        assert block(x).shape == x.shape
        assert all(m.bias is None for m in block.modules() if isinstance(m, torch.nn.Conv2d))
    net = fusion_network("mobilenet_se", 12, 3, 48)
    assert len(net) == 3 and net(x).shape == x.shape
    assert len(fusion_network("basic", 12, 0)) == 0
    with pytest.raises(ValueError, match="fusion kind"):
        fusion_network("transformer", 12, 2)


def test_inverted_residual_is_identity_when_projection_is_zero():
    block = InvertedResidualSE(8, 16).eval()
    torch.nn.init.zeros_(block.project[1].weight)  # BN gamma = 0 -> residual branch is 0
    x = torch.randn(1, 8, 4, 4)
    torch.testing.assert_close(block(x), x)


def test_tiny_extractor_is_frozen_aligned_and_deterministic():
    ext = TimmFeatureExtractor("tiny", layers=(2, 3), pretrained=False)
    assert ext.out_channels == 24 + 32 and ext.stride == 8
    assert not any(p.requires_grad for p in ext.parameters())
    ext.train()
    assert not ext.training  # stays in eval mode
    x = torch.randn(2, 3, 64, 64)
    feats = ext(x)
    assert feats.shape == (2, 56, 8, 8) and ext.feature_size(64) == (8, 8)
    deep = ext.stages(x)[1]
    expected = torch.nn.functional.interpolate(deep, size=(8, 8), mode="bilinear", align_corners=True)
    torch.testing.assert_close(feats[:, 24:], expected)
    again = TimmFeatureExtractor("tiny", layers=(2, 3), pretrained=False)
    torch.testing.assert_close(again(x), feats)  # fixed seed: same random net in every process
    with pytest.raises(ValueError, match="pretrained=False"):
        TimmFeatureExtractor("tiny", pretrained=True)


def test_timm_extractor_loads_local_weights_file(tmp_path):
    timm = pytest.importorskip("timm")
    full = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(full.state_dict(), path)
    ext = TimmFeatureExtractor("resnet18", layers=(2, 3), pretrained=False, weights_path=str(path))
    torch.testing.assert_close(ext.model.conv1.weight, full.conv1.weight)
    assert ext.out_channels == 128 + 256 and ext.stride == 8
    assert ext(torch.randn(1, 3, 64, 64)).shape == (1, 384, 8, 8)
    with pytest.raises(FileNotFoundError, match="weights_path"):
        TimmFeatureExtractor("resnet18", pretrained=False, weights_path=str(tmp_path / "missing.pth"))
