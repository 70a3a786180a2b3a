"""Density-based reweighting of contrastive patches and the reweighted BCE (paper Eqs. 1-4).

Features are compared by cosine similarity to FIFO memory banks of earlier steps' features:
M+ (normal patches) and M- (negative patches). A patch in a dense region of a bank gets a small
weight 1 / sum_z exp(beta * sim(z, z_i)). The weights are constants (computed under no_grad):
they decide how much each patch counts, they are not something the network may optimise.

Everything is computed in log space: after the per-class normalisation (lambda+/lambda-) only
the *relative* weights matter, so ``softmax(-logsumexp(...))`` gives the normalised weights
without overflow for large beta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FeatureMemoryBank(nn.Module):
    """FIFO queue of the last ``size`` L2-normalised feature vectors (detached).

    Kept as non-persistent buffers: a resumed run refills it within a few steps, and checkpoints
    stay independent of the bank size.
    """

    def __init__(self, size: int = 512, dim: int = 256) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"memory bank size must be >= 1, got {size}")
        self.size = size
        self.register_buffer("bank", torch.zeros(size, dim), persistent=False)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("count", torch.zeros((), dtype=torch.long), persistent=False)

    @property
    def features(self) -> Tensor:
        """The stored features [n, dim], n <= size (order irrelevant: the weights are sums)."""
        return self.bank[: int(self.count)]

    @torch.no_grad()
    def push(self, features: Tensor) -> None:
        """Enqueue [N, dim] features, overwriting the oldest entries."""
        z = F.normalize(features.detach().float(), dim=1)
        if z.shape[0] >= self.size:
            z = z[-self.size:]
        n = z.shape[0]
        start = int(self.ptr)
        idx = (torch.arange(n, device=z.device) + start) % self.size
        self.bank[idx] = z.to(self.bank.dtype)
        self.ptr.fill_((start + n) % self.size)
        self.count.fill_(min(int(self.count) + n, self.size))


def log_density(queries: Tensor, bank: Tensor, beta: float) -> Tensor:
    """log sum_{z in bank} exp(beta * cos(z, q)) for each query [N, dim] -> [N].

    ``bank`` must already be L2-normalised (as ``FeatureMemoryBank`` stores it). An empty bank
    gives 0 (every weight 1), which is what the first training step sees.
    """
    if bank.shape[0] == 0:
        return torch.zeros(queries.shape[0], device=queries.device, dtype=torch.float32)
    q = F.normalize(queries.detach().float(), dim=1)
    sims = q @ bank.float().t()
    return torch.logsumexp(beta * sims, dim=1)


def density_weight(queries: Tensor, bank: Tensor, beta: float) -> Tensor:
    """Unnormalised weight 1 / sum_z exp(beta sim(z, q)) (Eqs. 1-2). Use for inspection only:
    it underflows for large beta; the loss uses the log form."""
    return torch.exp(-log_density(queries, bank, beta))


@dataclass
class PatchWeights:
    """Per-class normalised weights (each sums to 1) and the log-densities they came from."""

    positive: Tensor  # [N+]
    negative: Tensor  # [N-]


@torch.no_grad()
def reweight(pos_features: Tensor, neg_features: Tensor, bank_pos: Tensor, bank_neg: Tensor, beta: float,
             noisy: bool = True, tail: bool = True) -> PatchWeights:
    """Normalised weights w+/lambda+ and (w_tail- w_noisy-)/lambda- (Eqs. 1-4).

    w_noisy-(i) = 1/sum_{M+} exp(beta sim(z, z_i-))   (fake anomalies that look normal count less)
    w_tail-(i)  = 1/sum_{M-} exp(beta sim(z, z_i-))   (common negatives count less)
    w_tail+(j)  = 1/sum_{M+} exp(beta sim(z, z_j+))   (common normals count less)
    Switching a term off replaces it by 1 (Table 4 ablation); with both off the loss is the
    class-balanced plain BCE.
    """
    n_pos, n_neg = pos_features.shape[0], neg_features.shape[0]
    log_w_pos = torch.zeros(n_pos, device=pos_features.device)
    log_w_neg = torch.zeros(n_neg, device=neg_features.device)
    if tail:
        log_w_pos = log_w_pos - log_density(pos_features, bank_pos, beta)
        log_w_neg = log_w_neg - log_density(neg_features, bank_neg, beta)
    if noisy:
        log_w_neg = log_w_neg - log_density(neg_features, bank_pos, beta)
    return PatchWeights(positive=torch.softmax(log_w_pos, dim=0), negative=torch.softmax(log_w_neg, dim=0))


def reweighted_bce(pos_logits: Tensor, neg_logits: Tensor, weights: PatchWeights) -> Tensor:
    """L_RBCE (Eq. 3) with f = sigmoid(logit) the anomaly probability.

    -sum_j w+_j log(1 - f(c+_j)) - sum_i w-_i log f(c-_i), weights already normalised per class.
    """
    loss_pos = -(weights.positive.to(pos_logits.dtype) * F.logsigmoid(-pos_logits)).sum()
    loss_neg = -(weights.negative.to(neg_logits.dtype) * F.logsigmoid(neg_logits)).sum()
    return loss_pos + loss_neg
