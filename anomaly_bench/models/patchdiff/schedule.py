"""One-cycle learning rate as a pure function of the step.

Same curve as ``torch.optim.lr_scheduler.OneCycleLR`` (cosine annealing, default pct_start,
div_factor and final_div_factor), but stateless: the total number of steps of a detector phase
depends on the number of training images, which is only known once the data is loaded, after
Lightning has built (and, on resume, restored) the optimisers.
"""

from __future__ import annotations

import math


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def one_cycle_lr(step: int, total_steps: int, max_lr: float, pct_start: float = 0.3,
                 div_factor: float = 25.0, final_div_factor: float = 1e4) -> float:
    """Learning rate of step ``step`` (0-based) of a ``total_steps`` one-cycle schedule."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    initial = max_lr / div_factor
    final = initial / final_div_factor
    warmup_end = float(pct_start * total_steps) - 1
    last = float(total_steps) - 1
    step = min(step, total_steps - 1)
    if step <= warmup_end:
        return _cos_anneal(initial, max_lr, step / warmup_end if warmup_end > 0 else 1.0)
    return _cos_anneal(max_lr, final, (step - warmup_end) / (last - warmup_end) if last > warmup_end else 1.0)
