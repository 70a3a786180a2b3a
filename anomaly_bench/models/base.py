"""AnomalyModule: the Lightning side of every method, and the shared val/test/predict steps.

A method is two classes (see ``docs/ARCHITECTURE.md``):

- a plain ``nn.Module`` in ``<method>/torch_model.py`` that owns inference:
  ``model(images) -> AnomalyOutput(anomaly_map [B, h, w], pred_score [B])``, raw scores. Every
  architecture and scoring option is declared there, once, with its ``Args:`` entry;
- an ``AnomalyModule`` subclass in ``<method>/lightning_model.py`` that trains it: it declares only
  training options and passes ``**model_options`` to the torch model (jsonargparse follows the
  ``**`` into the torch model's signature, so ``--help`` lists every option once), implements
  ``training_step`` / ``configure_optimizers`` and delegates inference to ``self.model``.

What happens to the outputs afterwards (metrics, pictures, score files, checkpoints, run folders)
is done by callbacks. The default set is installed here, in ``configure_callbacks``, so the CLI and a
plain ``Trainer().fit(CRAD(), MVTecAD(...))`` get the same one. It lives in the callbacks layer,
above this one, and is reached through ``DEFAULT_CALLBACKS`` (a ``module:function`` path, the way
Lightning names classes in configs), so that this module never imports metrics or callbacks.
A user's own instance of a default callback type in ``trainer.callbacks`` always wins.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import torch
from lightning.pytorch import Callback, LightningModule
from torch import Tensor, nn

from anomaly_bench.types import LABEL_NORMAL, AnomalyOutput, Batch, Prediction

NORMALIZATIONS = ("imagenet", "none", "minus_one_one")
DEFAULT_CALLBACKS = "anomaly_bench.callbacks.defaults:default_callbacks"
CHECKPOINT_KEY = "anomaly_bench"


class AnomalyModule(LightningModule):
    """Base class of every anomaly-detection method.

    Class attributes a method sets:
        input_normalization: how the datamodule must normalise images for this model
            (``imagenet`` | ``none`` | ``minus_one_one``); the datamodule asks the model.
        needs_training: False for a method whose untrained model is already what it is meant to
            be; ``test`` / ``predict`` without a checkpoint are refused for every other method.
        option_renames: ``{old option name: new name}`` of options renamed since version 0.1;
            ``option_value_renames``: ``{option: {old value: new value}}``; ``state_dict_renames``:
            ``[(old key prefix, new key prefix)]``. ``anomaly_bench.compat`` upgrades old configs
            and checkpoints with them.

    Attributes:
        model: the torch model (``torch_model.py``) that owns inference.
        thresholds: operating thresholds per category (``{category: record}``, records as
            ``anomaly_bench.metrics.thresholds.Thresholds`` or their dicts), fitted on normal
            validation images by the ``Thresholding`` callback; None before. Saved in checkpoints.
        normal_scores: the normal validation scores they came from (per category: image scores
            and a bounded pixel sample), saved too, so another target can be refitted later.
    """

    input_normalization: ClassVar[str] = "imagenet"
    needs_training: ClassVar[bool] = True
    option_renames: ClassVar[dict[str, str]] = {}
    option_value_renames: ClassVar[dict[str, dict[Any, Any]]] = {}
    state_dict_renames: ClassVar[list[tuple[str, str]]] = []
    model: nn.Module
    thresholds: dict[str, Any] | None = None
    normal_scores: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------- inference
    def forward(self, images: Tensor) -> AnomalyOutput:
        """Inference on images at the model's input size: the torch model's result."""
        return self.model(images)

    def score_batch(self, batch: Batch) -> AnomalyOutput:
        """Inference on a batch. Methods whose scoring depends on the category (per-category
        models or hyper-parameters) override this; the default calls ``forward(batch.image)``."""
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

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> Prediction:
        # the image paths and categories travel with the maps: `trainer.predict` results are usable as is
        return Prediction.of(self.score_batch(batch), batch)

    # ------------------------------------------------------------------------------- callbacks
    def configure_callbacks(self) -> list[Callback]:
        module_name, function_name = DEFAULT_CALLBACKS.split(":")
        factory = getattr(importlib.import_module(module_name), function_name)
        return factory(self.trainer if self._trainer is not None else None, self)

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
        # lets the CLI refuse a checkpoint of another model with a clear message, and lets
        # anomaly_bench.compat know which version's option names the checkpoint uses
        from anomaly_bench import __version__

        checkpoint[CHECKPOINT_KEY] = {
            "model_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "version": __version__,
            "thresholds": {str(c): (t.to_dict() if hasattr(t, "to_dict") else dict(t))
                           for c, t in (self.thresholds or {}).items()},
            "normal_scores": dict(self.normal_scores or {}),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # checkpoints of older versions: their state-dict keys are renamed to today's modules
        from anomaly_bench.compat import upgrade_checkpoint

        upgrade_checkpoint(checkpoint, type(self))
        stored = checkpoint.get(CHECKPOINT_KEY) or {}
        self.thresholds = dict(stored.get("thresholds") or {}) or None
        self.normal_scores = dict(stored.get("normal_scores") or {}) or None

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: bool | None = None, **kwargs: Any) -> Any:
        """Lightning's ``load_from_checkpoint``, for checkpoints of any version: renamed options are
        upgraded *before* the class is built from the stored hyper-parameters (``compat``)."""
        import io

        from anomaly_bench.compat import upgrade_checkpoint

        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        upgrade_checkpoint(checkpoint, cls)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        buffer.seek(0)
        return super().load_from_checkpoint(buffer, map_location=map_location, hparams_file=hparams_file,
                                            strict=strict, **kwargs)

    # --------------------------------------------------------------------------------- helpers
    @staticmethod
    def param_groups(named: dict[str, list[torch.nn.Parameter]], lrs: dict[str, float]) -> list[dict[str, Any]]:
        """Optimiser parameter groups from named lists (``grids``, ``networks``...), skipping empty ones."""
        return [{"params": p, "lr": lrs[name], "name": name} for name, p in named.items() if p]
