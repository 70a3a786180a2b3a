"""PatchDiff GRAD's training as a fixed sequence of phases, where a run stands in it, and the
names of the optimisers each phase steps.

Per category (sorted by name):

    generator  train the level-n PatchDiff (one phase per level; skipped when its samples exist)
    sample     draw the level-n contrastive images into <generated>/<category>/level_<n>/
    detectors  train every detector of the category together, one step each per tick
    stats      per-detector statistics of the maps on the training normals (for the fusion)

A run's position is two integers, (phase index, step inside the phase), kept in a buffer of the
LightningModule so that a checkpoint resumes the same phase at the next step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

PhaseKind = Literal["generator", "sample", "detectors", "stats"]
GENERATOR: PhaseKind = "generator"
SAMPLE: PhaseKind = "sample"
DETECTORS: PhaseKind = "detectors"
STATS: PhaseKind = "stats"


@dataclass(frozen=True)
class Phase:
    """One phase: its kind, its category and, for generator / sample phases, the PatchDiff level."""

    kind: PhaseKind
    category: str
    level: int | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.category}" + (f":level_{self.level}" if self.level is not None else "")


def plan(levels_of: Mapping[str, Sequence[int]]) -> list[Phase]:
    """The phases of every category in ``{category: its PatchDiff levels}``, in execution order."""
    phases: list[Phase] = []
    for category in sorted(levels_of):
        levels = list(levels_of[category])
        phases += [Phase(GENERATOR, category, level) for level in levels]
        phases += [Phase(SAMPLE, category, level) for level in levels]
        phases += [Phase(DETECTORS, category), Phase(STATS, category)]
    return phases


def generator_optimizer(category: str, level: int) -> str:
    """Name of the optimiser of a category's level-n PatchDiff."""
    return f"generator/{category}/level_{level}"


def detector_optimizer(category: str, detector: str) -> str:
    """Name of the optimiser of a category's detector (with its DAE head)."""
    return f"detector/{category}/{detector}"


class PhaseCursor:
    """Reads and moves a run's position, a [2] long tensor (phase index, step inside the phase).

    Args:
        progress: the LightningModule's buffer; changed in place, so it is saved with the state dict.
        phases: the run's plan (``plan``).
    """

    def __init__(self, progress: Tensor, phases: list[Phase]) -> None:
        self.progress = progress
        self.phases = phases

    @property
    def index(self) -> int:
        return int(self.progress[0])

    @property
    def step(self) -> int:
        return int(self.progress[1])

    @property
    def done(self) -> bool:
        return self.index >= len(self.phases)

    @property
    def current(self) -> Phase | None:
        return None if self.done else self.phases[self.index]

    def advance(self) -> Phase | None:
        """Go to the next phase at step 0; returns it (None when the run is complete)."""
        self.progress[0] += 1
        self.progress[1] = 0
        return self.current

    def count_step(self, total: int) -> bool:
        """Record one finished step of a ``total``-step phase; True when that ended the phase."""
        self.progress[1] += 1
        if self.step >= total:
            self.advance()
            return True
        return False
