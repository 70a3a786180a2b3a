"""``PatchCore``: fitting glue (config name ``patchcore``). Inference is ``PatchCoreModel.forward``.

Fitting is one pass over the training normals with no optimiser: every ``training_step`` stores
the batch's patch embeddings (on the CPU); when the epoch's batches are done, a greedy coreset of
them becomes the memory bank. That happens in whichever hook runs first: ``on_validation_start``
(Lightning validates *before* ``on_train_epoch_end``) or ``on_train_epoch_end`` (no validation).
Under DDP every rank's embeddings are gathered first and every rank selects the same coreset (the
seed is broadcast from rank 0). The bank is a buffer of the torch model, so it is saved in and
restored from the checkpoint like any weight.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from anomaly_bench.models.base import AnomalyModule
from anomaly_bench.models.components.coreset import CORESET_INITS, CoresetInit, greedy_coreset
from anomaly_bench.models.patchcore.torch_model import PatchCoreModel
from anomaly_bench.types import LABEL_NORMAL, AnomalyOutput, Batch

log = logging.getLogger(__name__)

_UNSET_MAX_EPOCHS = (None, -1, 1000)  # 1000: what Lightning uses when max_epochs is not given


class PatchCore(AnomalyModule):
    """PatchCore (Roth et al., CVPR 2022): the reference method of every benchmark grid.

    Args:
        coreset_ratio: share of the training patch embeddings kept in the memory bank by greedy
            coreset selection, in (0, 1]; 1 keeps them all.
        coreset_projection_dim: dimensions of the random linear projection the coreset's
            distances are measured in (the paper's Johnson-Lindenstrauss step); null measures
            them on the full embeddings.
        coreset_init: how the greedy selection starts: ``mean_distance`` (official approximate
            sampler: running distances start at the mean distance to a few random patches) or
            ``random_point`` (the paper's Algorithm 1: a random patch is the first pick).
        coreset_init_points: random patches averaged over by the ``mean_distance`` start.
        coreset_seed: seeds the projection and the start; null draws it from torch's generator,
            which ``seed_everything`` seeds, so a run repeats under the same seed.
        **model_options: the ``PatchCoreModel`` arguments (backbone, layers, scoring).
    """

    input_normalization = "imagenet"

    def __init__(
        self,
        coreset_ratio: float = 0.1,
        coreset_projection_dim: int | None = 128,
        coreset_init: CoresetInit = "mean_distance",
        coreset_init_points: int = 10,
        coreset_seed: int | None = None,
        **model_options: Any,
    ) -> None:
        super().__init__()
        if not 0.0 < float(coreset_ratio) <= 1.0:
            raise ValueError(f"PatchCore coreset_ratio must be in (0, 1], got {coreset_ratio}")
        if coreset_projection_dim is not None and int(coreset_projection_dim) < 1:
            raise ValueError(f"PatchCore coreset_projection_dim must be >= 1 or null, got {coreset_projection_dim}")
        if coreset_init not in CORESET_INITS:
            raise ValueError(f"PatchCore coreset_init must be one of {CORESET_INITS}, got {coreset_init!r}")
        if int(coreset_init_points) < 1:
            raise ValueError(f"PatchCore coreset_init_points must be >= 1, got {coreset_init_points}")
        self.save_hyperparameters()
        self.model = PatchCoreModel(**model_options)
        self.automatic_optimization = False
        # DistributedDataParallel refuses to wrap a module without a parameter that requires a
        # gradient, and nothing here is trained. This scalar is that parameter: it is never used in
        # a computation, so DDP never reduces anything (one float in the checkpoint).
        self.ddp_anchor = torch.nn.Parameter(torch.zeros(()))
        self._embeddings: list[Tensor] = []
        self._bank_pending = False  # True from the start of the fit epoch until the bank is built

    # ------------------------------------------------------------------------------- inference
    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> AnomalyOutput:
        if not self.model.is_fitted and self._trainer is not None and self.trainer.sanity_checking:
            # Lightning's sanity check runs before any training: nothing to compare with yet, and
            # sanity-check outputs are never logged. Neutral outputs keep the callbacks' contract.
            size = (len(batch), *batch.image.shape[-2:])
            return AnomalyOutput(batch.image.new_zeros(size), batch.image.new_zeros(len(batch)))
        return super().validation_step(batch, batch_idx, dataloader_idx)

    # --------------------------------------------------------------------------------- fitting
    def setup(self, stage: str) -> None:
        if stage != "fit" or self._trainer is None:
            return
        fit_loop = self.trainer.fit_loop
        if fit_loop.max_epochs != 1:
            if fit_loop.max_epochs not in _UNSET_MAX_EPOCHS:
                # never override a Trainer setting the user chose: say which key disagrees
                raise ValueError(
                    f"PatchCore fits in one pass over the training data, but trainer.max_epochs="
                    f"{fit_loop.max_epochs}; set trainer.max_epochs to 1 or leave it unset"
                )
            fit_loop.max_epochs = 1

    def configure_optimizers(self) -> None:
        return None  # nothing is trained: the memory bank is selected, not learned

    def on_train_epoch_start(self) -> None:
        self._embeddings = []
        self._bank_pending = True

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        images = batch.image[batch.label == LABEL_NORMAL]  # a memory bank of nominal patches only
        if len(images):
            self._embeddings.append(self.model.embed(images).cpu())

    def on_validation_start(self) -> None:
        if self._trainer is not None and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self._build_memory_bank()

    def on_train_epoch_end(self) -> None:
        self._build_memory_bank()

    def _build_memory_bank(self) -> None:
        # a flag every rank shares, not the local embeddings: under DDP every rank must join the
        # gather, even one that received no batch
        if not self._bank_pending:
            return  # built already this epoch (validation came first), or no fit epoch ran
        self._bank_pending = False
        # hooks of the validation loop run in inference mode: the bank must stay a normal tensor
        with torch.inference_mode(False), torch.no_grad():
            embed_dim = self.model.embed_dim
            features = torch.cat(self._embeddings) if self._embeddings else torch.empty(0, embed_dim)
            self._embeddings = []
            if self._trainer is not None and self.trainer.world_size > 1:
                features = self._gather_over_ranks(features)
            if len(features) == 0:
                raise RuntimeError(
                    "PatchCore saw no training images: the memory bank would be empty (check "
                    "data.init_args.root / category and trainer.limit_train_batches)"
                )
            hp = self.hparams
            seed = hp.coreset_seed if hp.coreset_seed is not None else int(torch.randint(2**31 - 1, (1,)).item())
            if self._trainer is not None and self.trainer.world_size > 1:
                seed = self.trainer.strategy.broadcast(seed, src=0)
            indices = greedy_coreset(features, hp.coreset_ratio, projection_dim=hp.coreset_projection_dim,
                                     init=hp.coreset_init, init_points=hp.coreset_init_points, seed=seed,
                                     device=self.device)
            self.model.set_memory_bank(features[indices])
        log.info("PatchCore memory bank: %d of %d patch embeddings (coreset ratio %s, seed %d)",
                 len(indices), len(features), hp.coreset_ratio, seed)

    def _gather_over_ranks(self, features: Tensor) -> Tensor:
        """Every rank's embeddings, in rank order (ranks may hold different counts)."""
        local = features.to(self.device)
        counts = self.all_gather(torch.tensor([len(local)], device=self.device)).view(-1)
        padded = local.new_zeros(int(counts.max()), local.shape[1])
        padded[: len(local)] = local
        gathered = self.all_gather(padded)  # [world, max_count, D]
        return torch.cat([gathered[r, : int(n)] for r, n in enumerate(counts.tolist())]).cpu()

    def on_train_end(self) -> None:
        self._embeddings = []
