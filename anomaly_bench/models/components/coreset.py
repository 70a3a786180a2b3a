"""Greedy k-center coreset subsampling with a random linear projection (PatchCore, Sec. 3.2).

A memory bank of N patch features is reduced to ``size`` rows that cover it: each step adds the
feature farthest from everything selected so far (the classic 2-approximation of k-center). The
distances are measured after a random linear projection to ``projection_dim`` dimensions
(Johnson-Lindenstrauss), which keeps the ranking of distances while making every step cheap.

Two ways to start, both seeded and deterministic (the random draws are made on the CPU, so a seed
gives the same coreset on every device up to float ties):

* ``"mean_distance"`` (official ``ApproximateGreedyCoresetSampler``): ``init_points`` random
  features are drawn; every feature's running distance starts at its *mean* distance to them; none
  of them is selected by that. The first pick is the feature with the largest mean distance.
* ``"random_point"`` (the paper's Algorithm 1 as anomalib reads it): one random feature is the
  first pick; every later pick is the farthest from the picks so far.

Memory is O(N · projection_dim): the N x N distance matrix is never built, and no step waits for
the device (indices stay on it until the end).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

CoresetInit = Literal["mean_distance", "random_point"]
CORESET_INITS: tuple[str, ...] = get_args(CoresetInit)
_PROJECTION_CHUNK = 65536  # rows projected per matrix product (bounds the device copy of the features)


def projection_matrix(in_dim: int, out_dim: int, generator: torch.Generator) -> Tensor:
    """A random ``[in_dim, out_dim]`` projection, entries U(-1/sqrt(in_dim), 1/sqrt(in_dim)) (float32, CPU).

    The distribution of a freshly initialised bias-free ``nn.Linear(in_dim, out_dim)``: what the
    official sampler projects with. Any scale works (a common factor does not change which point
    is farthest); the draw comes from ``generator`` only.
    """
    bound = 1.0 / math.sqrt(in_dim)
    return (torch.rand(in_dim, out_dim, generator=generator) * 2.0 - 1.0) * bound


def pairwise_distances(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances ``[len(a), len(b)]`` as sqrt(clamp(|a|² − 2 a·b + |b|², 0)), in float32."""
    a, b = a.float(), b.float()
    squared = (a * a).sum(1, keepdim=True) - 2.0 * a @ b.T + (b * b).sum(1)[None]
    return squared.clamp_min(0.0).sqrt()


def project_features(features: Tensor, matrix: Tensor | None, device: torch.device | str | None = None) -> Tensor:
    """``features @ matrix`` in chunks of rows, on ``device`` (default: the features' device), float32."""
    device = torch.device(device) if device is not None else features.device
    if matrix is None:
        return features.to(device, torch.float32)
    matrix = matrix.to(device, torch.float32)
    out = torch.empty(len(features), matrix.shape[1], device=device, dtype=torch.float32)
    for start in range(0, len(features), _PROJECTION_CHUNK):
        rows = features[start:start + _PROJECTION_CHUNK].to(device, torch.float32)
        out[start:start + len(rows)] = rows @ matrix
    return out


def greedy_coreset_indices(
    points: Tensor,
    size: int,
    init: CoresetInit = "mean_distance",
    init_points: int = 10,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Greedy k-center selection on ``points`` ``[N, d]`` (already projected): ``size`` distinct row indices.

    Args:
        points: the features to cover, on the device the selection should run on.
        size: how many rows to select, 1 <= size <= N.
        init: ``"mean_distance"`` (official) or ``"random_point"`` (paper / anomalib); see the module docstring.
        init_points: random features whose mean distance seeds the running distances (``mean_distance``).
        generator: a CPU generator for the random start (None: torch's global CPU generator).

    Returns:
        Long tensor ``[size]`` on ``points.device``, in selection order.
    """
    n = int(points.shape[0])
    if points.ndim != 2 or n == 0:
        raise ValueError(f"greedy coreset needs a non-empty [N, d] feature matrix, got shape {tuple(points.shape)}")
    if not 1 <= size <= n:
        raise ValueError(f"greedy coreset size must be in [1, {n}] for {n} features, got {size}")
    if init not in CORESET_INITS:
        raise ValueError(f"greedy coreset init must be one of {CORESET_INITS}, got {init!r}")
    if init_points < 1:
        raise ValueError(f"greedy coreset init_points must be >= 1, got {init_points}")
    points = points.float()
    device = points.device
    squared_norms = (points * points).sum(1)
    # one column per point: the per-step matrix-vector product then reads memory in one sweep
    # (about 2x faster on CPU than the row-major layout; same numbers)
    columns = points.T.contiguous()

    def squared_distances_to(index: Tensor) -> Tensor:
        # |p|² − 2 p·c + |c|² for every point p and the point c at ``index`` (a 1-element tensor:
        # no host sync), one fused matrix-vector product
        chosen = columns.index_select(1, index)[:, 0]
        return torch.addmv(squared_norms + squared_norms.index_select(0, index), columns.T, chosen, alpha=-2.0)

    # The loop tracks *squared* distances: min and argmax do not change under the square root, so
    # this picks the same points as the official loop on Euclidean distances, one pass cheaper.
    selected = torch.empty(size, dtype=torch.long, device=device)
    if init == "mean_distance":
        starts = torch.randperm(n, generator=generator)[: min(init_points, n)].to(device)
        running = pairwise_distances(points, points.index_select(0, starts)).mean(1).square()
        first_step = 0
    else:
        first = torch.randint(n, (1,), generator=generator).to(device)
        selected[0] = first[0]
        running = squared_distances_to(first)
        running.index_fill_(0, first, -math.inf)
        first_step = 1
    for step in range(first_step, size):
        index = running.argmax().view(1)
        selected[step] = index[0]
        torch.minimum(running, squared_distances_to(index), out=running)
        # a selected point never comes back, even when float error leaves its self-distance > 0
        running.index_fill_(0, index, -math.inf)
    return selected


def coreset_size(num_features: int, ratio: float) -> int:
    """Rows kept for ``ratio`` of ``num_features``: int(N · ratio) as the official sampler, at least 1."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
    return max(1, min(num_features, int(num_features * ratio)))


def greedy_coreset(
    features: Tensor,
    ratio: float,
    projection_dim: int | None = 128,
    init: CoresetInit = "mean_distance",
    init_points: int = 10,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Indices of a greedy k-center coreset holding ``ratio`` of ``features`` ``[N, D]``.

    Args:
        features: the full memory bank (any device; CPU is fine for large banks).
        ratio: share of rows kept, in (0, 1]; 1 keeps every row (no selection).
        projection_dim: dimensions of the random projection the distances are measured in;
            None (or equal to D) measures them on the features themselves.
        init: how the selection starts (``"mean_distance"`` official, ``"random_point"`` paper).
        init_points: random features averaged over by the ``"mean_distance"`` start.
        seed: seeds the projection and the start (in this order, from one CPU generator).
        device: where the projection and the selection run (default: the features' device).

    Returns:
        Long tensor of row indices on the CPU, in selection order.
    """
    if features.ndim != 2:
        raise ValueError(f"greedy coreset needs features [N, D], got shape {tuple(features.shape)}")
    if projection_dim is not None and projection_dim < 1:
        raise ValueError(f"greedy coreset projection_dim must be >= 1 or None, got {projection_dim}")
    size = coreset_size(int(features.shape[0]), ratio)
    if size == features.shape[0]:
        return torch.arange(size)
    generator = torch.Generator().manual_seed(int(seed))
    dim = int(features.shape[1])
    matrix = projection_matrix(dim, projection_dim, generator) if projection_dim not in (None, dim) else None
    points = project_features(features, matrix, device)
    return greedy_coreset_indices(points, size, init=init, init_points=init_points, generator=generator).cpu()
