"""Channel- and size-preserving conv blocks for the fusion networks of grid-based methods.

* ``InvertedResidualSE``: the MobileNetV3 block of CRAD's final code (1x1 expand -> BN -> h-swish,
  3x3 depthwise -> BN, squeeze-excite with hard-sigmoid gate, h-swish, 1x1 project -> BN, identity
  shortcut; every conv bias-free, stride 1).
* ``BasicResidualBlock``: the ResNet basic block (3x3 conv-BN-ReLU, 3x3 conv-BN, + identity, ReLU)
  of the first (arXiv v1) CRAD/GRAD code and paper ("7 basic residual blocks").
* ``fusion_network``: a stack of either kind.
"""

from __future__ import annotations

from torch import Tensor, nn

FUSION_KINDS = ("mobilenet_se", "basic")


class SqueezeExcite(nn.Module):
    """GAP -> Linear C->C/r (no bias) -> ReLU -> Linear C/r->C (no bias) -> hard-sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Hardsigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class InvertedResidualSE(nn.Module):
    """MobileNetV3 inverted residual with SE and h-swish; ``channels`` in and out, stride 1."""

    def __init__(self, channels: int, expansion_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        e = expansion_channels
        self.expand = nn.Sequential(nn.Conv2d(channels, e, 1, bias=False), nn.BatchNorm2d(e), nn.Hardswish())
        self.depthwise = nn.Sequential(
            nn.Conv2d(e, e, kernel_size, padding=kernel_size // 2, groups=e, bias=False), nn.BatchNorm2d(e)
        )
        self.se = SqueezeExcite(e)
        self.act = nn.Hardswish()
        self.project = nn.Sequential(nn.Conv2d(e, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.se(self.depthwise(self.expand(x))))
        return x + self.project(y)


class BasicResidualBlock(nn.Module):
    """ResNet basic block with identity shortcut; ``channels`` in and out, stride 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.body(x))


def fusion_network(kind: str, channels: int, num_blocks: int, expansion_channels: int | None = None) -> nn.Sequential:
    """``num_blocks`` blocks of ``kind`` ("mobilenet_se" needs ``expansion_channels``; "basic" ignores it)."""
    if kind not in FUSION_KINDS:
        raise ValueError(f"fusion kind must be one of {FUSION_KINDS}, got {kind!r}")
    if num_blocks < 0:
        raise ValueError(f"fusion num_blocks must be >= 0, got {num_blocks}")
    if kind == "mobilenet_se":
        if not expansion_channels or expansion_channels < 1:
            raise ValueError(f"mobilenet_se fusion needs expansion_channels >= 1, got {expansion_channels}")
        return nn.Sequential(*[InvertedResidualSE(channels, expansion_channels) for _ in range(num_blocks)])
    return nn.Sequential(*[BasicResidualBlock(channels) for _ in range(num_blocks)])
