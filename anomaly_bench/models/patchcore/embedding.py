"""Locally aware patch features (PatchCore Sec. 3.1), computed the way the official code does.

Official pipeline (amazon-science/patchcore-inspection ``patchcore.py`` ``_embed`` + ``common.py``):
for every backbone stage, each position's p x p neighbourhood (zero padding) is unfolded into a
C·p² vector in (channel, row, column) order; deeper stages' unfolded vectors are bilinearly resized
(``align_corners=False``) to the first stage's grid; each stage's vector is adaptively average
pooled to ``pretrain_embed_dim`` values (``MeanMapper``); the stages are stacked and adaptively
pooled again to ``embed_dim`` (``Aggregator``).

Here the same numbers come from cheaper operations: the per-stage pooling acts on the feature axis
and the resizing on the spatial axes, so they commute and we pool *before* resizing (a deep stage
is resized with ``pretrain_embed_dim`` channels instead of C·p²). Adaptive average pooling is a
fixed sum over at most K neighbouring inputs per output, done as K ``index_select`` + weighted sums:
exact, memory-light, and exportable (no data-dependent shapes). ``tests/models/test_patchcore.py``
checks the result against a literal transcription of the official sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def adaptive_pool_taps(in_size: int, out_size: int) -> tuple[Tensor, Tensor]:
    """Index and weight tables ``[K, out_size]`` equal to ``F.adaptive_avg_pool1d(·, out_size)``.

    Output j averages inputs ``[floor(j·n/m), ceil((j+1)·n/m))`` (PyTorch's rule); the tables pad
    shorter bins with weight 0 so every output is a K-term weighted sum.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"adaptive pooling needs positive sizes, got {in_size} -> {out_size}")
    starts = [(j * in_size) // out_size for j in range(out_size)]
    ends = [-((-(j + 1) * in_size) // out_size) for j in range(out_size)]  # ceil division
    taps = max(e - s for s, e in zip(starts, ends))
    index = torch.zeros(taps, out_size, dtype=torch.long)
    weight = torch.zeros(taps, out_size, dtype=torch.float32)
    for j, (s, e) in enumerate(zip(starts, ends)):
        index[: e - s, j] = torch.arange(s, e)
        weight[: e - s, j] = 1.0 / (e - s)
    return index, weight


class ChannelAdaptivePool(nn.Module):
    """Adaptive average pooling of the channel axis of ``[B, in_size, h, w]`` to ``[B, out_size, h, w]``.

    Args:
        in_size: channels of the input.
        out_size: channels of the output (larger than ``in_size`` repeats inputs, as PyTorch does).
    """

    def __init__(self, in_size: int, out_size: int) -> None:
        super().__init__()
        index, weight = adaptive_pool_taps(in_size, out_size)
        self.in_size, self.out_size = in_size, out_size
        # derived from the sizes: not part of the checkpoint
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        out = x.index_select(1, self.index[0]) * self.weight[0].to(x.dtype)[None, :, None, None]
        for k in range(1, self.index.shape[0]):
            out = out + x.index_select(1, self.index[k]) * self.weight[k].to(x.dtype)[None, :, None, None]
        return out


def neighbourhoods(x: Tensor, patch_size: int) -> Tensor:
    """Each position's ``patch_size``² neighbourhood (zero padding) as channels: ``[B, C·p², h, w]``.

    Channel order is (channel, row offset, column offset), the order of ``F.unfold``.
    """
    if patch_size == 1:
        return x
    pad = patch_size // 2
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad))
    shifted = [padded[:, :, i:i + h, j:j + w] for i in range(patch_size) for j in range(patch_size)]
    return torch.stack(shifted, dim=2).flatten(1, 2)


class LocallyAwarePatchEmbedding(nn.Module):
    """Backbone stage maps -> one ``embed_dim`` vector per position of the first stage's grid.

    Args:
        stage_channels: channels of each backbone stage, in the order the maps are given.
        patch_size: side p of the neighbourhood aggregated at every position (odd).
        pretrain_embed_dim: values each stage's C·p² neighbourhood vector is pooled to.
        embed_dim: values of the final embedding (all stages pooled together).
    """

    def __init__(self, stage_channels: Sequence[int], patch_size: int = 3, pretrain_embed_dim: int = 1024,
                 embed_dim: int = 1024) -> None:
        super().__init__()
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"PatchCore patch_size must be a positive odd number, got {patch_size}")
        self.patch_size = int(patch_size)
        self.stage_pools = nn.ModuleList(
            [ChannelAdaptivePool(int(c) * patch_size * patch_size, pretrain_embed_dim) for c in stage_channels]
        )
        self.final_pool = ChannelAdaptivePool(len(self.stage_pools) * pretrain_embed_dim, embed_dim)
        self.embed_dim = int(embed_dim)

    def forward(self, stages: Sequence[Tensor]) -> Tensor:
        """Stage maps ``[B, C_l, h_l, w_l]`` -> embeddings ``[B, embed_dim, h_0, w_0]``."""
        if len(stages) != len(self.stage_pools):
            raise ValueError(f"expected {len(self.stage_pools)} stage maps, got {len(stages)}")
        size = stages[0].shape[-2:]
        pooled = []
        for x, pool in zip(stages, self.stage_pools):
            y = pool(neighbourhoods(x, self.patch_size))
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            pooled.append(y)
        return self.final_pool(torch.cat(pooled, dim=1))
