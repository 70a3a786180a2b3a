"""Frozen multi-stage CNN features, aligned to one resolution and concatenated.

CRAD and bi-grid GRAD reconstruct *features*, not pixels: a frozen ImageNet backbone turns the image
into a stack of stage outputs, the deeper (coarser) maps are upsampled to the shallowest map's size
(bilinear, ``align_corners=True``, as the official UniAD-style neck does) and everything is
concatenated along channels. For EfficientNet-B4 at 224 px with ``layers=(2, 3)`` this is the
56-channel stride-8 map plus the 160-channel stride-16 map: 216 channels at 28x28.

Weights come from timm by name (``pretrained=True``, Hugging Face hub), from a local file
(``weights_path``, works offline) or are random (``pretrained=False``). ``backbone="tiny"`` is a
small random CNN (fixed seed, no download, milliseconds on CPU) for tests and demos.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TINY_BACKBONE = "tiny"
# the same net, but each stage's output taken before its last ReLU: signed features, as the block
# outputs of an EfficientNet (a linear projection) are; CRAD-style refinement needs signed features
TINY_SIGNED_BACKBONE = "tiny_signed"
TINY_BACKBONES = (TINY_BACKBONE, TINY_SIGNED_BACKBONE)
# (channels, stride) of the tiny backbone's stages; indices follow timm's ``out_indices``.
_TINY_STAGES: tuple[tuple[int, int], ...] = ((8, 2), (16, 4), (24, 8), (32, 16))
_TINY_SEED = 0


class _TinyBackbone(nn.Module):
    """A 4-stage random CNN (strides 2, 4, 8, 16) that mimics timm's ``features_only`` API.

    Random convolutions keep local image structure, so reconstruction-based detectors still work
    on synthetic defects; weights are drawn from a fixed seed so every process builds the same net.
    ``signed``: return each stage's output before its last ReLU (the next stage still gets the ReLU).
    """

    def __init__(self, out_indices: Sequence[int], signed: bool = False) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(_TINY_SEED)
        stages, in_ch = [], 3
        for out_ch, _ in _TINY_STAGES:
            down = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1, bias=False)
            conv = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
            for c in (down, conv):
                # He-normal keeps activations O(1) through the stack (PyTorch's default init shrinks them).
                fan_in = c.in_channels * c.kernel_size[0] * c.kernel_size[1]
                with torch.no_grad():
                    c.weight.copy_(torch.randn(c.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            stages.append(nn.Sequential(down, nn.ReLU(inplace=True), conv))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.out_indices = tuple(out_indices)
        self.channels = [_TINY_STAGES[i][0] for i in self.out_indices]
        self.reductions = [_TINY_STAGES[i][1] for i in self.out_indices]
        self.signed = signed

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, stage in enumerate(self.stages):
            before = stage(x)
            x = torch.relu(before)
            if i in self.out_indices:
                outs.append(before if self.signed else x)
            if i >= max(self.out_indices):
                break
        return outs


def _build_timm(backbone: str, layers: Sequence[int], pretrained: bool, weights_path: str | None) -> nn.Module:
    import timm

    from anomaly_bench.models.components.weights import part_name, resolve_weights, timm_status

    kwargs: dict = {"features_only": True, "out_indices": tuple(layers)}
    status = None
    if pretrained or weights_path is not None:
        # local file, then the caches, then the hub only if reachable: never wait for timeouts offline
        status = timm_status(backbone, weights_path, part_name("backbone", backbone),
                             "model.init_args.weights_path")
        local = resolve_weights(status)
        if local is not None:
            # timm's own local-file route: it filters the classifier and adapts keys for features_only.
            kwargs["pretrained_cfg_overlay"] = {"file": str(local)}
        pretrained = True
    try:
        return timm.create_model(backbone, pretrained=pretrained, **kwargs)
    except RuntimeError as err:  # unknown model name / bad state dict
        raise RuntimeError(f"could not build timm backbone {backbone!r} (layers={tuple(layers)}): {err}") from err
    except Exception as err:  # the download itself failed (hub error, connection lost)
        if status is None or status.available:
            raise
        first_line = (str(err).splitlines() or [""])[0][:200]
        raise status.error(f"the download failed: {type(err).__name__}: {first_line}") from err


class TimmFeatureExtractor(nn.Module):
    """Frozen backbone -> list of stage maps -> one aligned, concatenated feature map.

    Args:
        backbone: any timm model name (optionally with a pretrained tag, e.g.
            ``"tf_efficientnet_b4.aa_in1k"``), ``"tiny"`` (random 4-stage CNN, strides 2/4/8/16,
            channels 8/16/24/32; ``pretrained`` must then be False) or ``"tiny_signed"`` (the same net
            with signed stage outputs, like an EfficientNet's block outputs).
        layers: stage indices as timm's ``out_indices`` (EfficientNet-B4: 2 = 56 ch @ stride 8,
            3 = 160 ch @ stride 16). The output lives at the resolution of the first listed stage.
        pretrained: load the weights timm associates with the name (needs the hub or its cache).
        weights_path: a local state-dict file of the full timm model; implies pretrained weights
            and works offline.

    Attributes:
        out_channels: channels of the concatenated map (sum over ``layers``).
        stride: input pixels per output cell (stride of the first listed stage).
        stage_channels / stage_strides: per listed stage.

    The module stays in eval mode and never requires gradients, whatever ``train()`` is called
    with: batch-norm statistics of the frozen net must not drift.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_b4.aa_in1k",
        layers: Sequence[int] = (2, 3),
        pretrained: bool = True,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        layers = tuple(int(i) for i in layers)
        if not layers:
            raise ValueError("TimmFeatureExtractor: layers must name at least one stage index")
        self.backbone_name = backbone
        self.layers = layers
        if backbone in TINY_BACKBONES:
            if pretrained or weights_path is not None:
                raise ValueError(f"backbone {backbone!r} is random by design; set pretrained=False and weights_path=None")
            if any(i < 0 or i >= len(_TINY_STAGES) for i in layers):
                raise ValueError(f"backbone {backbone!r} has stages 0..{len(_TINY_STAGES) - 1}, got layers={layers}")
            self.model = _TinyBackbone(layers, signed=backbone == TINY_SIGNED_BACKBONE)
            self.stage_channels = list(self.model.channels)
            self.stage_strides = list(self.model.reductions)
        else:
            self.model = _build_timm(backbone, layers, pretrained, weights_path)
            self.stage_channels = list(self.model.feature_info.channels())
            self.stage_strides = list(self.model.feature_info.reduction())
        self.out_channels = int(sum(self.stage_channels))
        self.stride = int(self.stage_strides[0])
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "TimmFeatureExtractor":
        # Frozen: always eval, so BN running statistics never change.
        return super().train(False)

    def feature_size(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the output map for an input of ``image_size`` (int = square)."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        # Shapes depend on padding details (TF "same" vs symmetric); ask the net itself.
        with torch.no_grad():
            probe = next(self.model.parameters())
            out = self.model(torch.zeros(1, 3, h, w, device=probe.device, dtype=probe.dtype))
        return int(out[0].shape[-2]), int(out[0].shape[-1])

    def stages(self, images: Tensor) -> list[Tensor]:
        """The raw stage maps (no alignment), for methods that want them separately."""
        with torch.no_grad():
            return list(self.model(images))

    @staticmethod
    def align(maps: Sequence[Tensor]) -> Tensor:
        """Upsample every map to the first map's size (bilinear, align_corners=True) and concat."""
        size = maps[0].shape[-2:]
        aligned = [maps[0]] + [
            m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=True)
            for m in maps[1:]
        ]
        return torch.cat(aligned, dim=1)

    def forward(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] (normalised as the backbone expects) -> features [B, C, h, w]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"TimmFeatureExtractor expects images [B, 3, H, W], got {tuple(images.shape)}")
        with torch.no_grad():
            return self.align(self.model(images))
