"""The patch-level detector (paper Table 8) and its denoising-autoencoder head (Table 9).

The detector is an 8-layer FCN without padding: on a 5 x 34 x 34 patch (RGB + coordinates) it
returns one logit; on a full image it returns a dense map with stride 4 whose cell (i, j) scores
the 34 x 34 window starting at pixel (4i, 4j). ``f(c) = sigmoid(logit)`` is the probability that
the patch is *anomalous* (the paper's "positive" class is the normal one, scored 0).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_bench.models.components.blur import gaussian_blur as shared_gaussian_blur

PATCH_SIZE = 34  # receptive field of the FCN in pixels
PATCH_STRIDE = 4  # output stride of the FCN
FEATURE_DIM = 256  # conv7 width: the "last latent layer" used by reweighting and the DAE head
IN_CHANNELS = 5  # RGB + (x, y) coordinates

# (out_channels, kernel, stride) of conv1..conv8, Table 8. Every conv has padding 0.
DETECTOR_LAYERS: tuple[tuple[int, int, int], ...] = (
    (64, 4, 2), (128, 4, 2), (256, 3, 1), (512, 3, 1), (256, 3, 1), (256, 1, 1), (256, 1, 1), (1, 1, 1),
)


class PatchDetector(nn.Module):
    """Table 8: conv1..conv7 with ReLU form ``f_Z`` (features), conv8 is the linear logit head.

    ``width`` scales every hidden width (1.0 = the paper's network, ~2.92 M parameters); values
    below 1 exist only for CPU tests and demos and keep kernels, strides and receptive field.
    """

    def __init__(self, in_channels: int = IN_CHANNELS, width: float = 1.0) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"detector width must be > 0, got {width}")
        layers: list[nn.Module] = []
        channels = in_channels
        for out, kernel, stride in DETECTOR_LAYERS[:-1]:
            out = max(4, round(out * width))
            layers += [nn.Conv2d(channels, out, kernel, stride=stride, padding=0), nn.ReLU(inplace=False)]
            channels = out
        self.features = nn.Sequential(*layers)
        out, kernel, stride = DETECTOR_LAYERS[-1]
        self.classifier = nn.Conv2d(channels, out, kernel, stride=stride, padding=0)
        self.feature_dim = channels

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (features [B,256,h,w], logits [B,h,w])."""
        z = self.features(x)
        return z, self.classifier(z)[:, 0]

    def forward(self, x: Tensor) -> Tensor:
        """Logit map [B, h, w]; h = (H - 34) // 4 + 1 for H of the form 4k + 2 (56 at 256 px)."""
        return self.classifier(self.features(x))[:, 0]


class DAEHead(nn.Module):
    """Table 9: 1x1 convs 256 -> 256 -> 256 -> 256 -> 5780, reshaped to a 5 x 34 x 34 patch.

    Used only by the feature regulariser during training; inference drops it.
    """

    def __init__(self, feature_dim: int = FEATURE_DIM, in_channels: int = IN_CHANNELS,
                 patch_size: int = PATCH_SIZE, hidden: int = 256) -> None:
        super().__init__()
        self.out_shape = (in_channels, patch_size, patch_size)
        out_dim = in_channels * patch_size * patch_size
        self.net = nn.Sequential(
            nn.Conv2d(feature_dim, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, out_dim, 1),
        )

    def forward(self, z: Tensor) -> Tensor:
        """z [B, 256, 1, 1] (or [B, 256]) -> reconstructed patch [B, 5, 34, 34]."""
        if z.ndim == 2:
            z = z[:, :, None, None]
        return self.net(z).reshape(z.shape[0], *self.out_shape)


def patch_map_to_image(logit_map: Tensor, image_size: tuple[int, int],
                       patch_size: int = PATCH_SIZE, stride: int = PATCH_STRIDE) -> Tensor:
    """Place a detector map [B, h, w] on the pixel grid of the image it was computed on.

    Cell (i, j) is centred at pixel 4i + 17 - 0.5 (pixel-centre convention). Upsampling by the
    stride and padding with the border value by (patch - stride) / 2 on the top/left puts every
    window score over the centre of its window instead of stretching the map over the image.
    """
    _, h, w = logit_map.shape
    up = F.interpolate(logit_map[:, None], size=(h * stride, w * stride), mode="bilinear", align_corners=False)
    offset = (patch_size - stride) // 2
    pad_bottom = max(image_size[0] - h * stride - offset, 0)
    pad_right = max(image_size[1] - w * stride - offset, 0)
    up = F.pad(up, (offset, pad_right, offset, pad_bottom), mode="replicate")
    return up[:, 0, : image_size[0], : image_size[1]]


def gaussian_blur(maps: Tensor, sigma: float, kernel_size: int | None = None) -> Tensor:
    """Blur of [B, H, W] score maps; default kernel 2·⌈3σ⌉ + 1 (our reading of the paper's "kernel 16")."""
    return shared_gaussian_blur(maps, sigma, kernel_size, truncate=3.0)


