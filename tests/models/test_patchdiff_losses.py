"""Reweighting (Eqs. 1-4) on hand-made features, memory banks, the regularisers, one-cycle LR."""

import math

import pytest
import torch

from anomaly_bench.models.patchdiff.detector import DAEHead, PatchDetector
from anomaly_bench.models.patchdiff.regularizers import feature_regularizer, gradient_penalty, input_gradients
from anomaly_bench.models.patchdiff.reweighting import (
    FeatureMemoryBank,
    density_weight,
    log_density,
    reweight,
    reweighted_bce,
)
from anomaly_bench.models.patchdiff.schedule import one_cycle_lr

E1, E2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])


def test_density_weight_formula_by_hand():
    bank = torch.stack([E1, E1, E2])  # unit vectors
    beta = 2.0
    q = torch.stack([E1 * 3.0, E2, (E1 + E2)])  # norm of the query must not matter
    w = density_weight(q, bank, beta)
    expected = torch.tensor([
        1 / (2 * math.exp(2.0) + math.exp(0.0)),
        1 / (2 * math.exp(0.0) + math.exp(2.0)),
        1 / (3 * math.exp(2.0 / math.sqrt(2))),
    ])
    assert torch.allclose(w, expected, rtol=1e-5)
    assert torch.allclose(log_density(q, bank, beta), -expected.log(), rtol=1e-5)
    assert torch.equal(log_density(q, bank[:0], beta), torch.zeros(3))  # empty bank: weight 1


def test_reweight_matches_equations_and_normalises_per_class():
    beta = 1.5
    bank_pos = torch.stack([E1, E1, E1, E2])
    bank_neg = torch.stack([E2, E2, (E1 + E2) / math.sqrt(2)])
    pos = torch.stack([E1, E2, E1 + 0.5 * E2])
    neg = torch.stack([E1, E2])
    w = reweight(pos, neg, bank_pos, bank_neg, beta)
    w_tail_pos = density_weight(pos, bank_pos, beta)
    w_tail_neg = density_weight(neg, bank_neg, beta)
    w_noisy_neg = density_weight(neg, bank_pos, beta)
    assert torch.allclose(w.positive, w_tail_pos / w_tail_pos.sum(), atol=1e-6)
    both = w_tail_neg * w_noisy_neg
    assert torch.allclose(w.negative, both / both.sum(), atol=1e-6)
    assert abs(w.positive.sum().item() - 1) < 1e-6 and abs(w.negative.sum().item() - 1) < 1e-6
    # a positive in the dense E1 region counts less than the rare E2 one
    assert w.positive[0] < w.positive[1]
    # switches: noisy only / tail only / neither
    only_noisy = reweight(pos, neg, bank_pos, bank_neg, beta, noisy=True, tail=False)
    assert torch.allclose(only_noisy.positive, torch.full((3,), 1 / 3))
    assert torch.allclose(only_noisy.negative, w_noisy_neg / w_noisy_neg.sum(), atol=1e-6)
    # a negative that looks normal (E1, dense in M+) counts less than one far from M+
    assert only_noisy.negative[0] < only_noisy.negative[1]
    neither = reweight(pos, neg, bank_pos, bank_neg, beta, noisy=False, tail=False)
    assert torch.allclose(neither.negative, torch.full((2,), 0.5))


def test_reweight_is_stable_for_large_beta_and_carries_no_gradient():
    feats = torch.randn(6, 8, requires_grad=True)
    bank = torch.nn.functional.normalize(torch.randn(512, 8), dim=1)
    w = reweight(feats[:3], feats[3:], bank, bank, beta=500.0)
    assert torch.isfinite(w.positive).all() and torch.isfinite(w.negative).all()
    assert not w.positive.requires_grad and not w.negative.requires_grad


def test_rbce_by_hand():
    pos_logits = torch.tensor([0.0, 2.0])
    neg_logits = torch.tensor([1.0, -1.0, 3.0])
    from anomaly_bench.models.patchdiff.reweighting import PatchWeights

    weights = PatchWeights(positive=torch.tensor([0.25, 0.75]), negative=torch.tensor([0.5, 0.3, 0.2]))
    sig = torch.sigmoid
    expected = -(0.25 * torch.log(1 - sig(torch.tensor(0.0))) + 0.75 * torch.log(1 - sig(torch.tensor(2.0)))) \
        - (0.5 * torch.log(sig(torch.tensor(1.0))) + 0.3 * torch.log(sig(torch.tensor(-1.0)))
           + 0.2 * torch.log(sig(torch.tensor(3.0))))
    assert torch.allclose(reweighted_bce(pos_logits, neg_logits, weights), expected, atol=1e-6)


def test_memory_bank_is_fifo_and_normalised():
    bank = FeatureMemoryBank(size=4, dim=2)
    assert bank.features.shape == (0, 2)
    bank.push(torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]))
    assert bank.features.shape == (3, 2)
    assert torch.allclose(bank.features.norm(dim=1), torch.ones(3))
    bank.push(torch.tensor([[5.0, 0.0], [0.0, -1.0]]))  # overwrites the oldest ([2, 0])
    stored = {tuple(round(v, 3) for v in row.tolist()) for row in bank.features}
    assert stored == {(0.0, 1.0), (0.707, 0.707), (1.0, 0.0), (0.0, -1.0)}
    bank.push(torch.randn(10, 2))  # more than the size: keeps the last 4
    assert bank.features.shape == (4, 2)


def _tiny_detector() -> PatchDetector:
    torch.manual_seed(0)
    det = PatchDetector(width=0.0625).double()
    for p in det.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return det


def test_input_gradient_matches_finite_differences():
    det = _tiny_detector()
    patches = torch.randn(2, 5, 34, 34, dtype=torch.float64)
    grad = input_gradients(det, patches, create_graph=False)
    h = 1e-6
    for n, c, y, x in [(0, 0, 5, 7), (1, 3, 20, 11), (0, 4, 33, 0)]:
        plus, minus = patches.clone(), patches.clone()
        plus[n, c, y, x] += h
        minus[n, c, y, x] -= h
        fd = (torch.sigmoid(det(plus))[n].sum() - torch.sigmoid(det(minus))[n].sum()) / (2 * h)
        assert abs(fd.item() - grad[n, c, y, x].item()) < 1e-6 * max(1.0, abs(fd.item()))


def test_gradient_penalty_value_and_double_backward_match_finite_differences():
    det = _tiny_detector()
    patches = torch.randn(3, 5, 34, 34, dtype=torch.float64)
    penalty = gradient_penalty(det, patches)
    grads = input_gradients(det, patches, create_graph=False)
    assert torch.allclose(penalty, grads.flatten(1).pow(2).sum(1).mean())
    # d penalty / d weight via double backward vs finite difference in that weight
    weight = det.classifier.weight
    (analytic,) = torch.autograd.grad(penalty, weight)
    h = 1e-6
    with torch.no_grad():
        weight[0, 0, 0, 0] += h
    up = gradient_penalty(det, patches).item()
    with torch.no_grad():
        weight[0, 0, 0, 0] -= 2 * h
    down = gradient_penalty(det, patches).item()
    fd = (up - down) / (2 * h)
    assert analytic[0, 0, 0, 0].item() == pytest.approx(fd, rel=1e-4, abs=1e-10)


def test_feature_regularizer_reconstructs_patches_and_trains_the_detector():
    torch.manual_seed(0)
    det = PatchDetector(width=0.0625)
    head = DAEHead(det.feature_dim, hidden=det.feature_dim)
    patches = torch.randn(4, 5, 34, 34)
    loss = feature_regularizer(det, head, patches, 0.0, 0.0)
    recon = head(det.features(patches))
    assert torch.allclose(loss, ((recon - patches) ** 2).mean())
    loss.backward()
    assert det.features[0].weight.grad.abs().sum() > 0  # the detector's features are regularised


def test_one_cycle_matches_torch():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=50)
    for step in range(50):
        assert one_cycle_lr(step, 50, 1e-3) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)
        opt.step()
        sched.step()
