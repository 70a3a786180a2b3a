"""The detector's two regularisers: denoising-AE feature loss (Eq. 5) and input-gradient penalty (Eq. 6)."""

from __future__ import annotations

import torch
from torch import Tensor

from anomaly_bench.models.patchdiff.detector import DAEHead, PatchDetector


def feature_regularizer(detector: PatchDetector, head: DAEHead, patches: Tensor,
                        input_noise_std: float = 0.1, feature_noise_std: float = 0.1) -> Tensor:
    """L_feat = mean || R(f_Z(c + eps_c) + eps_z) - c ||^2 (Eq. 5).

    We average over elements as well as patches (the paper sums over the 5*34*34 elements of a
    patch); this only rescales alpha_1 by 1/5780 and keeps the default alpha_1 = 1 sensible.
    The gradient flows into both the detector's feature layers and the head.
    """
    noisy = patches + input_noise_std * torch.randn_like(patches)
    z = detector.features(noisy)
    z = z + feature_noise_std * torch.randn_like(z)
    recon = head(z)
    return ((recon - patches) ** 2).mean()


def input_gradients(detector: PatchDetector, patches: Tensor, create_graph: bool = True) -> Tensor:
    """d f(c) / d c for each patch [N,5,34,34] -> [N,5,34,34], f = sigmoid(logit).

    Patches are independent in the batch, so the gradient of the sum gives each patch's own
    gradient. ``create_graph`` keeps the graph for the double backward of the penalty.
    """
    c = patches if patches.requires_grad else patches.detach().requires_grad_(True)
    prob = torch.sigmoid(detector(c)).sum()
    (grad,) = torch.autograd.grad(prob, c, create_graph=create_graph)
    return grad


def gradient_penalty(detector: PatchDetector, positive_patches: Tensor) -> Tensor:
    """L_grad = mean over positive patches of ||grad_c f(c)||^2 (Eq. 6), differentiable in the weights."""
    grad = input_gradients(detector, positive_patches, create_graph=True)
    return grad.flatten(1).pow(2).sum(dim=1).mean()
