"""Fine-tuning GLAD's scoring DINO on pairs of a normal image and its reconstruction.

GLAD's map is the token distance between an image and its diffusion reconstruction, so whatever
the reconstruction changes on *normal* content (re-drawn texture, left-over noise) lights up like a
defect. The official code (hyao1/GLAD, for VisA and PCB-Bank, following DDAD) therefore fine-tunes
the scoring DINO so that a normal image and its reconstruction have the same features, while ADS
keeps a frozen copy of the original DINO:

* only the MLPs of the score blocks (3, 6, 9, 12) train; Adam, lr 3e-4, batch 16 x 2 accumulation,
  15 epochs at the scoring resolution (256 px for VisA);
* loss, summed over the score blocks: the batch mean of (1 − cos) between the *flattened* token maps
  of input and reconstruction (one cosine per image and block), plus λ (0.01) times the same between
  each of those maps and the original DINO's, which keeps the features near what they were;
* pairs: a normal training image and its reconstruction from t = 200 (the test t_min), 15 DDIM
  steps, no ADS. As released, the official helper never updates its latents, so the "reconstruction"
  is the input noised to t = 200 and decoded: ``pairs="noised_input"`` reproduces that,
  ``"reconstruction"`` (default) does what the recipe means.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from anomaly_bench.models.glad.torch_model import GLADModel

log = logging.getLogger(__name__)

FinetunePairs = Literal["reconstruction", "noised_input"]
FINETUNE_PAIRS = ("reconstruction", "noised_input")


def finetune_loss(input_tokens: Sequence[Tensor], recon_tokens: Sequence[Tensor],
                  original_input_tokens: Sequence[Tensor], original_recon_tokens: Sequence[Tensor],
                  anchor_weight: float) -> Tensor:
    """Σ_blocks mean_batch(1 − cos(F_in, F_rec)) + λ·[(1 − cos(F_in, F⁰_in)) + (1 − cos(F_rec, F⁰_rec))].

    Each token map [B, N, C] is flattened to one vector per image (the official cosine is over the
    whole map, not per token); F⁰ are the original DINO's tokens, λ = ``anchor_weight``.
    """
    def distance(a: Tensor, b: Tensor) -> Tensor:
        return (1 - F.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=1)).mean()

    total = input_tokens[0].new_zeros((), dtype=torch.float32)
    for f_in, f_rec, o_in, o_rec in zip(input_tokens, recon_tokens, original_input_tokens, original_recon_tokens,
                                        strict=True):
        total = total + distance(f_in, f_rec)
        if anchor_weight:
            total = total + anchor_weight * (distance(f_in, o_in) + distance(f_rec, o_rec))
    return total


def score_block_mlps(dino: nn.Module, blocks: Sequence[int]) -> list[nn.Parameter]:
    """The parameters that fine-tuning trains: the MLPs of the (1-based) score blocks."""
    return [p for b in sorted(set(blocks)) for p in dino.vit.blocks[b - 1].mlp.parameters()]


@torch.no_grad()
def make_pairs(model: GLADModel, images: Tensor, category: str, pairs: FinetunePairs, start_step: int | None,
               generator: torch.Generator) -> Tensor:
    """The partner of each normal image ([-1, 1]): its reconstruction from ``start_step`` (the
    category's t_min when None) by plain DDIM without ADS, or the input noised to that step and decoded."""
    t = int(model.params_for(category)["t_min"]) if start_step is None else int(start_step)
    t = min(max(t, 1), model.num_train_timesteps - 1)
    if pairs == "reconstruction":
        n = images.shape[0]
        return model.reconstruct(images, t, torch.full((n,), float("inf")), torch.zeros(n, dtype=torch.long),
                                 use_ads=False, use_saff=False, generator=generator).images
    latents = model.codec.encode(images, sample=False).float()
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    alpha_bar = model.alphas_cumprod[t]
    return model.codec.decode(alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise).float()


@torch.inference_mode(False)  # Lightning calls this from a validation hook, under inference mode
def finetune_scoring_dino(
    model: GLADModel,
    normals_by_category: Mapping[str, Tensor],
    epochs: int,
    lr: float = 3e-4,
    anchor_weight: float = 0.01,
    batch_size: int = 16,
    pairs: FinetunePairs = "reconstruction",
    start_step: int | None = None,
    seed: int = 0,
    pair_context: Callable[[], AbstractContextManager] | None = None,
) -> list[float]:
    """Fine-tune ``model.dino`` (the scoring DINO) in place; returns the mean loss of each epoch.

    ``normals_by_category``: ``{category: [N, 3, H, W]}`` normal training images, uint8 0..255 or
    float in [-1, 1]. ADS must already have its own copy (``model.separate_ads_dino()``); that copy
    is also the original the anchor term compares with. ``pair_context`` (e.g. the trainer's
    precision context) is entered while the pairs are made, so they carry the test's rounding; the
    ViT itself trains in its own dtype without autocast.
    """
    if pairs not in FINETUNE_PAIRS:
        raise ValueError(f"GLAD dino_finetune_pairs must be one of {FINETUNE_PAIRS}, got {pairs!r}")
    if model.frozen_ads_dino is None:
        raise RuntimeError("fine-tuning the scoring DINO needs a separate ADS DINO: call model.separate_ads_dino() first")
    device = model.alphas_cumprod.device
    generator = torch.Generator().manual_seed(int(seed))
    inputs, partners = [], []
    was_training = model.training
    model.eval()
    for category, images in normals_by_category.items():
        for chunk in images.split(batch_size):
            chunk = chunk.float() / 127.5 - 1 if chunk.dtype == torch.uint8 else chunk.float()
            chunk = chunk.to(device)
            with pair_context() if pair_context is not None else contextlib.nullcontext():
                partner = make_pairs(model, chunk, category, pairs, start_step, generator)
            # both sides stored as the DINO sees them, on the CPU in half precision (many images)
            inputs.append(model.scoring_input(chunk).half().cpu())
            partners.append(model.scoring_input(partner).half().cpu())
    inputs_all, partners_all = torch.cat(inputs), torch.cat(partners)
    del inputs, partners  # not twice in memory
    count = inputs_all.shape[0]

    dino, original = model.dino, model.frozen_ads_dino
    blocks = list(model.score_layers)
    params = score_block_mlps(dino, blocks)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    dtype = next(dino.parameters()).dtype
    losses: list[float] = []
    try:
        with torch.enable_grad():
            for _ in range(int(epochs)):
                order = torch.randperm(count, generator=generator)
                total = 0.0
                for start in range(0, count, batch_size):
                    idx = order[start:start + batch_size]
                    both = torch.cat([inputs_all[idx], partners_all[idx]]).to(device=device, dtype=dtype)
                    tokens = dino(both, blocks)
                    if anchor_weight:
                        with torch.no_grad():
                            reference = original(both, blocks)
                    else:
                        reference = [t.detach() for t in tokens]  # unused by the loss
                    n = idx.shape[0]
                    loss = finetune_loss([t[:n] for t in tokens], [t[n:] for t in tokens],
                                         [t[:n] for t in reference], [t[n:] for t in reference], anchor_weight)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * n
                losses.append(total / count)
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        model.train(was_training)
    if losses:
        log.info("GLAD: scoring DINO fine-tuned on %d normal images (%s pairs), loss %.4f -> %.4f",
                 count, pairs, losses[0], losses[-1])
    return losses
