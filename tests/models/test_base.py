"""AnomalyModule's shared gradient-clipping rule: the method's default unless the trainer sets one."""

from __future__ import annotations

import torch

from anomaly_bench.models import AnomalyModule


class _Clipped(AnomalyModule):
    def __init__(self, default: float | None) -> None:
        super().__init__()
        self.default = default
        self.calls: list[tuple[float, str]] = []

    def default_gradient_clip_norm(self) -> float | None:
        return self.default

    def clip_gradients(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        self.calls.append((gradient_clip_val, gradient_clip_algorithm))


def test_method_default_applies_when_the_trainer_sets_none() -> None:
    module = _Clipped(0.1)
    module.configure_gradient_clipping(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0))
    assert module.calls == [(0.1, "norm")]


def test_trainer_value_and_algorithm_win_over_the_default() -> None:
    module = _Clipped(0.1)
    module.configure_gradient_clipping(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 5.0, "value")
    assert module.calls == [(5.0, "value")]


def test_no_default_and_no_trainer_value_means_no_clipping() -> None:
    module = _Clipped(None)
    module.configure_gradient_clipping(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0))
    assert module.calls == []
