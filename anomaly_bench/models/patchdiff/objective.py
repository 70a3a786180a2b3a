"""The detector's training objective (paper Eq. 7): L = L_RBCE + alpha_1 L_feat + alpha_2 L_grad."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from anomaly_bench.models.patchdiff.detector import DAEHead, PatchDetector
from anomaly_bench.models.patchdiff.regularizers import feature_regularizer, gradient_penalty
from anomaly_bench.models.patchdiff.reweighting import FeatureMemoryBank, reweight, reweighted_bce


@dataclass(frozen=True)
class DetectorObjective:
    """The weights and switches of Eq. 7; their defaults and meaning are ``PatchDiffGRAD``'s options."""

    beta_density: float
    noisy_reweighting: bool
    tail_reweighting: bool
    feature_regularizer: bool
    gradient_penalty: bool
    alpha_feat: float
    alpha_grad: float
    dae_input_noise: float
    dae_feature_noise: float

    def losses(self, detector: PatchDetector, head: DAEHead, banks: tuple[FeatureMemoryBank, FeatureMemoryBank],
               positives: Tensor, negatives: Tensor) -> dict[str, Tensor]:
        """Every term and the total (``loss``) for one batch of patches; pushes this batch's features
        into the (positive, negative) memory banks after the weights were computed from them."""
        bank_pos, bank_neg = banks
        patches = torch.cat([positives, negatives], dim=0)
        features, logits = detector.forward_features(patches)
        features, logits = features.flatten(1), logits.flatten()
        n_pos = positives.shape[0]
        weights = reweight(features[:n_pos], features[n_pos:], bank_pos.features, bank_neg.features,
                           self.beta_density, noisy=self.noisy_reweighting, tail=self.tail_reweighting)
        out = {"rbce": reweighted_bce(logits[:n_pos], logits[n_pos:], weights)}
        loss = out["rbce"]
        if self.feature_regularizer and self.alpha_feat > 0:
            out["feat"] = feature_regularizer(detector, head, patches, self.dae_input_noise, self.dae_feature_noise)
            loss = loss + self.alpha_feat * out["feat"]
        if self.gradient_penalty and self.alpha_grad > 0:
            out["grad"] = gradient_penalty(detector, positives)
            loss = loss + self.alpha_grad * out["grad"]
        bank_pos.push(features[:n_pos])
        bank_neg.push(features[n_pos:])
        out["loss"] = loss
        return out
