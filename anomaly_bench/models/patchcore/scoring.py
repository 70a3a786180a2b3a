"""Nearest-neighbour patch scores and the paper's image-score reweighting (PatchCore Sec. 3.3).

Everything is plain tensor algebra with shapes fixed by the inputs (no ``torch.cdist``, no
data-dependent Python branches), so the scoring traces into ONNX / OpenVINO graphs. Distances are
computed in float32 with autocast off: |x|² − 2x·y + |y|² cancels badly in half precision.
"""

from __future__ import annotations

import torch
from torch import Tensor


def squared_distances(queries: Tensor, keys: Tensor) -> Tensor:
    """Squared Euclidean distances ``[M, K]`` between rows, clamped at 0 (float32)."""
    queries, keys = queries.float(), keys.float()
    squared = (queries * queries).sum(1, keepdim=True) - 2.0 * queries @ keys.T + (keys * keys).sum(1)[None]
    return squared.clamp_min(0.0)


def nearest_neighbours(queries: Tensor, bank: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Squared distance to, and index of, each query's nearest bank row.

    The bank is scanned ``chunk_size`` rows at a time, so memory stays ``[M, chunk_size]`` whatever
    the bank size; the result does not depend on ``chunk_size``.

    Args:
        queries: ``[M, D]`` patch embeddings.
        bank: ``[N, D]`` memory bank, N >= 1.
        chunk_size: bank rows compared per matrix product.

    Returns:
        ``(squared_distance [M], index [M])``.
    """
    with torch.autocast(device_type=queries.device.type, enabled=False):
        queries = queries.float()
        query_norms = (queries * queries).sum(1, keepdim=True)
        best = torch.full((queries.shape[0],), float("inf"), device=queries.device)
        best_index = torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device)
        for start in range(0, int(bank.shape[0]), chunk_size):
            keys = bank[start:start + chunk_size].float()
            squared = query_norms - 2.0 * queries @ keys.T + (keys * keys).sum(1)[None]
            value, index = squared.min(1)
            better = value < best
            best = torch.where(better, value, best)
            best_index = torch.where(better, index + start, best_index)
        return best.clamp_min(0.0), best_index


def reweighted_image_scores(
    patch_scores: Tensor,
    nn_index: Tensor,
    embeddings: Tensor,
    bank: Tensor,
    num_neighbors: int,
) -> Tensor:
    """The paper's Eq. 7: the largest patch score, scaled by how typical its nearest neighbour is.

    For each image, m_test* is the patch with the largest score s* and m* its nearest bank row;
    N_b(m*) are the ``num_neighbors`` bank rows nearest to m* (m* itself included). The score is
    ``(1 − exp‖m_test* − m*‖ / Σ_{m ∈ N_b(m*)} exp‖m_test* − m‖) · s*``, with Euclidean distances
    in the weight (as printed; anomalib computes it the same way) and s* in the model's distance.

    Args:
        patch_scores: ``[B, P]`` patch scores (Euclidean or squared distances) that s* is read from.
        nn_index: ``[B, P]`` index of each patch's nearest bank row.
        embeddings: ``[B, P, D]`` the patch embeddings.
        bank: ``[N, D]`` the memory bank.
        num_neighbors: b, the size of N_b(m*) (capped at N).

    Returns:
        ``[B]`` image scores.
    """
    with torch.autocast(device_type=patch_scores.device.type, enabled=False):
        top = patch_scores.argmax(1, keepdim=True)  # [B, 1]
        score = patch_scores.gather(1, top)[:, 0].float()
        nearest = nn_index.gather(1, top)[:, 0]  # [B]
        test_patch = embeddings.gather(1, top[:, :, None].expand(-1, 1, embeddings.shape[-1]))[:, 0].float()
        anchor = bank.index_select(0, nearest).float()  # m*, [B, D]
        # ‖m_test* − m*‖ from the difference (more accurate than the matrix-product form)
        distance = (test_patch - anchor).pow(2).sum(-1).sqrt()
        k = min(int(num_neighbors), int(bank.shape[0]))
        support = squared_distances(anchor, bank).topk(k, dim=1, largest=False).indices  # [B, k]
        support_rows = bank.index_select(0, support.reshape(-1)).float().view(support.shape[0], k, -1)
        to_support = (test_patch[:, None, :] - support_rows).pow(2).sum(-1).sqrt()  # [B, k]
        # softmax share of m*, shifted by the row maximum for stability; written out because
        # OpenVINO mis-converts ONNX ReduceLogSumExp (it reduced over every axis in our check)
        shift = to_support.amax(1)
        share = torch.exp(distance - shift) / torch.exp(to_support - shift[:, None]).sum(1)
        weight = 1.0 - share
        return weight * score
