"""AnomalyModule: the contract every method implements, and the shared val/test/predict steps.

A method implements ``forward(images) -> AnomalyOutput`` (inference), ``training_step`` and
``configure_optimizers``. Everything that happens to the outputs afterwards (metrics, heat maps,
score files) is done by callbacks that see the raw ``AnomalyOutput`` the step returned: the
Evaluator (``anomaly_bench.metrics``) and the visualiser (``anomaly_bench.callbacks``). The base
class adds both by default unless the user configured their own under ``trainer.callbacks``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from lightning.pytorch import Callback, LightningModule
from torch import Tensor

from anomaly_bench.types import LABEL_NORMAL, AnomalyOutput, Batch

NORMALIZATIONS = ("imagenet", "none", "minus_one_one")


class AnomalyModule(LightningModule):
    """Base class of every anomaly-detection method.

    Args:
        evaluator: True for the default Evaluator, False for none, or a configured instance.
            A user-supplied Evaluator under ``trainer.callbacks`` always wins over the default.
        visualizer: True for the default heat-map writer, False for none, or an instance.

    Class attributes a method may override:
        input_normalization: how the datamodule must normalise images for this model
            (``imagenet`` | ``none`` | ``minus_one_one``); the datamodule asks the model.
        default_image_size: the input size the method's paper uses (informational; configs set
            ``data.image_size``).
    """

    input_normalization: ClassVar[str] = "imagenet"
    default_image_size: ClassVar[int] = 256

    def __init__(self, evaluator: Callback | bool = True, visualizer: Callback | bool = True) -> None:
        super().__init__()
        self.evaluator = evaluator
        self.visualizer = visualizer

    # ----------------------------------------------------------------- what a method implements
    def forward(self, images: Tensor) -> AnomalyOutput:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward(images) -> AnomalyOutput")

    def score_batch(self, batch: Batch) -> AnomalyOutput:
        """Inference on a batch. Override only when scoring needs more than the pixels
        (e.g. per-category hyper-parameters); the default calls ``forward(batch.image)``."""
        return self(batch.image)

    # ------------------------------------------------------------------ shared evaluation steps
    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> AnomalyOutput:
        output = self.score_batch(batch)
        normal = batch.label == LABEL_NORMAL
        if bool(normal.any()):
            # A model-agnostic health signal on held-out normals: it needs no anomalies.
            self.log(
                "val/normal_score_mean",
                output.pred_score[normal].float().mean(),
                batch_size=int(normal.sum()),
                sync_dist=True,
                on_epoch=True,
            )
        return output

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> AnomalyOutput:
        return self.score_batch(batch)

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> AnomalyOutput:
        return self.score_batch(batch)

    # ------------------------------------------------------------------------------- callbacks
    def configure_callbacks(self) -> list[Callback]:
        present = list(self.trainer.callbacks) if self._trainer is not None else []
        callbacks: list[Callback] = []
        for wanted, load in ((self.evaluator, _evaluator_class), (self.visualizer, _visualizer_class),
                             (True, _score_writer_class)):
            if not wanted:
                continue  # switched off: not even imported
            cls = load()
            if any(isinstance(cb, cls) for cb in present):
                continue  # the user's own instance wins; never replace it
            callbacks.append(wanted if isinstance(wanted, Callback) else cls())
        return callbacks

    # ------------------------------------------------------------------------- gradient clipping
    def default_gradient_clip_norm(self) -> float | None:
        """The method's own global-norm clip (e.g. an official 0.1), used when ``trainer.gradient_clip_val``
        is unset; None means no clipping. A trainer setting always wins."""
        return None

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        if gradient_clip_val is None:
            gradient_clip_val, gradient_clip_algorithm = self.default_gradient_clip_norm(), "norm"
        if gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm or "norm")

    # ------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # lets the CLI refuse a checkpoint of another model with a clear message
        checkpoint["anomaly_bench"] = {"model_class": f"{type(self).__module__}.{type(self).__qualname__}"}

    # --------------------------------------------------------------------------------- helpers
    @staticmethod
    def param_groups(named: dict[str, list[torch.nn.Parameter]], lrs: dict[str, float]) -> list[dict[str, Any]]:
        """Build optimiser parameter groups from named lists, skipping empty ones."""
        return [{"params": p, "lr": lrs[name], "name": name} for name, p in named.items() if p]


def _evaluator_class() -> type[Callback]:
    from anomaly_bench.metrics import Evaluator

    return Evaluator


def _visualizer_class() -> type[Callback]:
    from anomaly_bench.callbacks.visualizer import Visualizer

    return Visualizer


def _score_writer_class() -> type[Callback]:
    from anomaly_bench.callbacks.scores import ScoreWriter

    return ScoreWriter
