"""Bi-grid GRAD: shapes, stage logic, frozen abnormal branch in stage B, end-to-end detection."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from anomaly_bench.models.grad import BiGridGRAD, BiGridGRADModel
from anomaly_bench.models.grad.torch_model import standardise_per_image_channel
from anomaly_bench.types import Batch, collate_items

IMAGE = 64


@pytest.fixture(autouse=True)
def _one_thread():
    """The CI box has 2 shared cores: one intra-op thread is ~10x faster than two under load."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_grad(**overrides) -> BiGridGRAD:
    args = dict(
        backbone="tiny",
        pretrained=False,
        image_size=IMAGE,
        local_resolution=8,
        global_resolution=2,
        fusion_blocks=1,
        abnormal_epochs=1,
        normal_epochs=1,
    )
    args.update(overrides)
    module = BiGridGRAD(**args)
    module.configure_callbacks = lambda: []  # this file checks the model alone, not the Evaluator
    return module


def _stripes(image_size: int, vertical: bool, phase: float) -> torch.Tensor:
    coords = torch.arange(image_size).float()
    wave = torch.sin(coords / 3.0 + phase)
    field = wave[:, None] if vertical else wave[None, :]
    return field.expand(image_size, image_size)


def make_items(n_normal: int, n_anomalous: int, seed: int) -> list[dict]:
    """Normal images: stripes across x at a random phase. Anomalies: a square of stripes across y
    with the same amplitude and colour, so feature magnitude alone does not give them away."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.tensor([1.0, -0.5, 0.2])[:, None, None]
    items = []
    for i in range(n_normal + n_anomalous):
        phase = float(torch.rand((), generator=g)) * 6.28
        image = _stripes(IMAGE, False, phase) * colour + 0.05 * torch.randn(3, IMAGE, IMAGE, generator=g)
        mask = torch.zeros(IMAGE, IMAGE)
        label = int(i >= n_normal)
        if label:
            size = int(torch.randint(12, 20, (), generator=g))
            top, left = [int(v) for v in torch.randint(4, IMAGE - size - 4, (2,), generator=g)]
            rotated = _stripes(IMAGE, True, phase) * colour
            image[:, top : top + size, left : left + size] = rotated[:, top : top + size, left : left + size]
            mask[top : top + size, left : left + size] = 1.0
        items.append(
            dict(
                image=image,
                label=label,
                mask=mask,
                orig_size=(IMAGE, IMAGE),
                category="stripes",
                defect="rotated" if label else "good",
                path=f"img_{seed}_{i}.png",
            )
        )
    return items


def loader(items: list[dict], batch_size: int = 8, shuffle: bool = False) -> DataLoader:
    return DataLoader(items, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_items)


def trainer(max_epochs: int | None, callbacks: list[Callback] | None = None, **kwargs) -> Trainer:
    return Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=kwargs.pop("enable_checkpointing", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks or [],
        **kwargs,
    )


# ------------------------------------------------------------------------------------ structure
def test_efficientnet_b6_default_gives_272_channels_at_32x32() -> None:
    model = BiGridGRADModel(pretrained=False, fusion_blocks=1)
    assert model.feature_shape == (272, 32, 32)
    assert model.normal.local_grid.grid.shape == (1, 272, 32, 32)
    assert model.normal.global_grid.grid.shape == (1, 272 * 32 * 32, 4, 4)
    for name, p in model.normal.named_parameters():
        assert p.shape == dict(model.abnormal.named_parameters())[name].shape, name
    assert model.normal.fusion[0].body[0].in_channels == 544
    assert model.fusion_weight.item() == pytest.approx(-0.2)


def test_both_grid_pairs_are_sampled_with_the_same_coordinates() -> None:
    model = tiny_grad().model
    model.eval()
    x = torch.randn(2, *model.feature_shape)
    # Make both branches identical: then the same coordinates must give the same samples.
    model.abnormal.load_state_dict(model.normal.state_dict())
    model.abnormal.standardise = False
    rec = model.reconstruct(x)
    assert torch.allclose(rec.normal, rec.abnormal)
    assert torch.allclose(rec.fused, rec.normal * (1 + model.fusion_weight))


def test_abnormal_sample_is_standardised_per_image_and_channel() -> None:
    torch.manual_seed(0)
    t = torch.randn(3, 5, 4, 6) * torch.rand(3, 5, 1, 1) * 10 + torch.randn(3, 5, 1, 1) * 7
    z = standardise_per_image_channel(t)
    assert torch.allclose(z.mean(dim=(2, 3)), torch.zeros(3, 5), atol=1e-4)
    assert torch.allclose(z.flatten(2).std(dim=2, unbiased=True), torch.ones(3, 5), atol=1e-4)


def test_convex_fusion_uses_the_fixed_lambda() -> None:
    model = tiny_grad(fusion_mode="convex", fusion_lambda=0.7).model
    assert not isinstance(getattr(model, "fusion_weight", None), torch.nn.Parameter)
    n, a = torch.ones(1, 2, 2, 2), torch.full((1, 2, 2, 2), 3.0)
    assert torch.allclose(model.fuse(n, a), torch.full_like(n, 0.7 + 0.3 * 3.0))
    with pytest.raises(ValueError, match="fusion_mode"):
        tiny_grad(fusion_mode="sum")


def test_optimizer_groups_follow_the_official_settings() -> None:
    module = tiny_grad()
    config = module.configure_optimizers()
    optimizer = config["optimizer"]
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["grids"]["lr"] == pytest.approx(0.1) and groups["networks"]["lr"] == pytest.approx(1e-3)
    assert all(g["weight_decay"] == pytest.approx(0.01) for g in optimizer.param_groups)
    assert len(groups["grids"]["params"]) == 4  # local + global, normal + abnormal
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trainable == in_optimizer, "every trainable parameter (and only those) is optimised"
    backbone = {id(p) for p in module.model.feature_extractor.parameters()}
    assert not backbone & in_optimizer


def test_stage_schedule_and_lr_decay_restart_per_stage() -> None:
    module = tiny_grad(abnormal_epochs=3, normal_epochs=5, lr_step_epochs=2, lr_gamma=0.5)
    assert [module.stage_at(e) for e in range(8)] == ["abnormal"] * 3 + ["normal"] * 5
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    factors = [scheduler.lr_lambdas[0](e) for e in range(8)]
    assert factors == [1.0, 1.0, 0.5, 1.0, 1.0, 0.5, 0.5, 0.25]
    ablation = tiny_grad(use_abnormal_grid=False, abnormal_epochs=3, normal_epochs=2)
    assert ablation.total_epochs == 2 and ablation.stage_at(0) == "normal"


@pytest.mark.parametrize("source", ["fbp", "gaussian_noise", "real"])
def test_stage_a_step_trains_the_abnormal_branch_from_each_source(source: str) -> None:
    module = tiny_grad(anomaly_source=source)
    module.apply_stage("abnormal")
    batch = collate_items(make_items(2, 2, seed=1))
    loss = module.training_step(batch, 0)
    loss.backward()
    assert loss.item() > 0
    assert module.model.abnormal.local_grid.grid.grad is not None
    assert all(p.grad is None for p in module.model.normal.parameters())


# ------------------------------------------------------------------------------ training stages
class _Snapshots(Callback):
    """State of every branch at the start of each training epoch and at the end of fit."""

    def __init__(self) -> None:
        self.at_epoch_start: dict[int, dict] = {}
        self.stages: list[str] = []
        self.final: dict | None = None

    @staticmethod
    def _state(module: BiGridGRAD) -> dict:
        m = module.model
        return {
            "abnormal": copy.deepcopy(m.abnormal.state_dict()),  # parameters AND BN buffers
            "normal": copy.deepcopy(m.normal.state_dict()),
            "mapper": copy.deepcopy(m.mapper.state_dict()),
            "w": float(m.fusion_weight),
        }

    def on_train_epoch_start(self, trainer: Trainer, module: BiGridGRAD) -> None:
        self.at_epoch_start[trainer.current_epoch] = self._state(module)
        self.stages.append(module.training_stage)

    def on_fit_end(self, trainer: Trainer, module: BiGridGRAD) -> None:
        self.final = self._state(module)


def _changed(a: dict, b: dict, names: list[str] | None = None) -> list[str]:
    return [k for k in (names or list(a)) if not torch.equal(a[k], b[k])]


def test_stage_b_keeps_the_abnormal_branch_bit_identical_and_trains_the_normal_branch() -> None:
    torch.manual_seed(0)
    module = tiny_grad(abnormal_epochs=1, normal_epochs=2, train_mapper_in_normal_stage=True)
    snaps = _Snapshots()
    items = make_items(16, 0, seed=2)
    trainer(3, [snaps], limit_val_batches=1).fit(module, loader(items), loader(make_items(2, 2, seed=3)))
    assert snaps.stages == ["abnormal", "normal", "normal"]
    start_a, start_b, final = snaps.at_epoch_start[0], snaps.at_epoch_start[1], snaps.final
    # stage A moved the abnormal branch (so the test below is not vacuous) but not the normal one
    assert _changed(start_a["abnormal"], start_b["abnormal"])
    assert not _changed(start_a["normal"], start_b["normal"])
    # stage B: every abnormal parameter and BN statistic is bit-identical ...
    assert not _changed(start_b["abnormal"], final["abnormal"])
    # ... while the normal grids, its fusion stack, the mapper and w have all moved
    normal_params = [n for n, _ in module.model.normal.named_parameters()]
    changed = _changed(start_b["normal"], final["normal"], normal_params)
    assert {"local_grid.grid", "global_grid.grid", "recover.weight"} <= set(changed)
    assert any(n.startswith("fusion.") for n in changed)
    assert _changed(start_b["mapper"], final["mapper"])
    assert start_b["w"] != final["w"]


def test_alternating_schedule_interleaves_the_stages_and_restarts_the_decay_per_stage() -> None:
    module = tiny_grad(abnormal_epochs=2, normal_epochs=4, stage_schedule="alternating", lr_step_epochs=2,
                       lr_gamma=0.5)
    assert [module.stage_at(e) for e in range(6)] == ["abnormal", "normal", "abnormal", "normal", "normal",
                                                      "normal"]
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    # epochs within their stage: A0 B0 A1 B1 B2 B3 -> factors 1, 1, 1, 1, 0.5, 0.5
    assert [scheduler.lr_lambdas[0](e) for e in range(6)] == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="alternating"):
        tiny_grad(abnormal_epochs=3, normal_epochs=2, stage_schedule="alternating")
    with pytest.raises(ValueError, match="stage_schedule"):
        tiny_grad(stage_schedule="random")


def test_a_frozen_mapper_keeps_stage_a_coordinates_through_stage_b() -> None:
    torch.manual_seed(0)
    module = tiny_grad(abnormal_epochs=1, normal_epochs=2, train_mapper_in_normal_stage=False)
    snaps = _Snapshots()
    trainer(3, [snaps], limit_val_batches=0).fit(module, loader(make_items(16, 0, seed=2)))
    assert _changed(snaps.at_epoch_start[0]["mapper"], snaps.at_epoch_start[1]["mapper"])  # A trains it
    assert not _changed(snaps.at_epoch_start[1]["mapper"], snaps.final["mapper"])  # B does not
    assert _changed(snaps.at_epoch_start[1]["normal"], snaps.final["normal"])


def test_contrastive_normalization_reaches_the_loss() -> None:
    batch = collate_items(make_items(2, 2, seed=1))
    losses = {}
    for rule in ("per_image_count", "per_pixel_mean"):
        torch.manual_seed(0)
        module = tiny_grad(contrastive_normalization=rule)
        module.apply_stage("abnormal")
        torch.manual_seed(1)
        losses[rule] = float(module.training_step(batch, 0))
    assert losses["per_image_count"] != pytest.approx(losses["per_pixel_mean"])
    with pytest.raises(ValueError, match="normalization"):
        tiny_grad(contrastive_normalization="mean")


def test_resuming_mid_run_resumes_stage_b(tmp_path) -> None:
    torch.manual_seed(0)
    from lightning.pytorch.callbacks import ModelCheckpoint

    items = make_items(8, 0, seed=4)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer(2, [checkpoint], enable_checkpointing=True, limit_val_batches=0).fit(
        tiny_grad(abnormal_epochs=1, normal_epochs=1), loader(items)
    )
    after_stage_a = tmp_path / "epoch=0.ckpt"
    assert after_stage_a.is_file()
    resumed = tiny_grad(abnormal_epochs=1, normal_epochs=1)
    snaps = _Snapshots()
    trainer(2, [snaps], limit_val_batches=0).fit(resumed, loader(items), ckpt_path=str(after_stage_a))
    assert snaps.stages == ["normal"]
    assert not _changed(snaps.at_epoch_start[1]["abnormal"], snaps.final["abnormal"])


def test_unset_max_epochs_becomes_the_sum_of_the_stages() -> None:
    module = tiny_grad(abnormal_epochs=1, normal_epochs=1)
    snaps = _Snapshots()
    trainer(None, [snaps], limit_val_batches=0).fit(module, loader(make_items(4, 0, seed=5)))
    assert snaps.stages == ["abnormal", "normal"]


def test_conflicting_max_epochs_is_an_error_not_an_override() -> None:
    module = tiny_grad(abnormal_epochs=1, normal_epochs=1)
    with pytest.raises(ValueError, match="trainer.max_epochs=5 .*abnormal_epochs \\+ normal_epochs = 2"):
        trainer(5, limit_val_batches=0).fit(module, loader(make_items(4, 0, seed=5)))


# ----------------------------------------------------------------------------------- end to end
def _image_auroc(module: BiGridGRAD, items: list[dict]) -> float:
    module.eval()
    scores, labels = [], []
    with torch.no_grad():
        for batch in loader(items):
            output = module(batch.image)
            assert output.anomaly_map.shape == (len(batch), IMAGE, IMAGE)
            scores += output.pred_score.tolist()
            labels += batch.label.tolist()
    return float(roc_auc_score(labels, scores))


@pytest.fixture(scope="module")
def trained_with_shipped_defaults():
    """Both variants trained with the shipped defaults (grid lr 0.1, lr 1e-3, refinement, the public
    file's loss, FBP, the mapper trained in both stages); only the network is small. The backbone is
    the tiny random CNN with *signed* outputs ("tiny_signed"): like EfficientNet's block outputs, and
    unlike ReLU outputs, whose near-1 cosine makes the refinement copy the input back everywhere."""
    out = {}
    for use_abnormal_grid in (True, False):
        torch.manual_seed(0)
        module = tiny_grad(use_abnormal_grid=use_abnormal_grid, backbone="tiny_signed", layers=(1, 2),
                           global_resolution=4, fusion_blocks=2, abnormal_epochs=4, normal_epochs=16)
        test_items = make_items(16, 16, seed=7)
        before = _image_auroc(module, test_items)
        trainer(None, limit_val_batches=0).fit(module, loader(make_items(64, 0, seed=6), batch_size=16, shuffle=True))
        out[use_abnormal_grid] = (module, before, _image_auroc(module, test_items), test_items)
    return out


@pytest.mark.parametrize("use_abnormal_grid", [True, False])
def test_end_to_end_training_with_the_shipped_defaults_detects_synthetic_defects(
        trained_with_shipped_defaults, use_abnormal_grid: bool) -> None:
    module, before, auroc, _ = trained_with_shipped_defaults[use_abnormal_grid]
    defaults = inspect.signature(BiGridGRAD.__init__).parameters
    for option in ("grid_lr", "lr", "weight_decay", "contrastive_normalization", "train_mapper_in_normal_stage",
                   "stage_schedule", "anomaly_source", "negative_margin", "grad_clip_norm"):
        assert module.hparams[option] == defaults[option].default, option  # the shipped training defaults
    assert module.model.use_refinement and module.model.image_size == (IMAGE, IMAGE)
    if not use_abnormal_grid:
        assert module.model.abnormal is None
        assert not any("abnormal" in n for n, _ in module.named_parameters())
    assert auroc > 0.8, f"image AUROC {auroc:.3f} (before training {before:.3f})"
    assert auroc > before + 0.1, f"training did not help: {before:.3f} -> {auroc:.3f}"


def test_the_abnormal_grid_still_marks_pasted_anomalies_and_moves_the_map_after_stage_b(
        trained_with_shipped_defaults) -> None:
    """Stage B trains the shared mapper that also places the frozen abnormal grid's samples: after it,
    the abnormal branch must still tell pasted blocks from normal positions, and it must change the map."""
    module, _, _, test_items = trained_with_shipped_defaults[True]
    model = module.model.eval()
    normals = collate_items([item for item in test_items if item["label"] == 0])
    with torch.no_grad():
        features = model.extract_features(normals.image)
        torch.manual_seed(3)
        corrupted, mask = module.anomaly_source(features, normals.mask)
        similarity = model.abnormal_output(corrupted)[:, 0]
        pasted, elsewhere = similarity[mask > 0.5].mean(), similarity[mask <= 0.5].mean()
        assert mask.any() and pasted > elsewhere + 0.2, (float(pasted), float(elsewhere))
        with_grid = model(normals.image).anomaly_map
        weight = model.fusion_weight.clone()
        model.fusion_weight.zero_()
        without = model(normals.image).anomaly_map
        model.fusion_weight.copy_(weight)
    change = (with_grid - without).abs().mean() / without.abs().mean()
    assert float(weight) != 0.0 and change > 0.01, float(change)


def test_wrong_image_size_names_the_setting() -> None:
    module = tiny_grad()
    with pytest.raises(ValueError, match="image_size"):
        module(torch.randn(1, 3, 32, 32))


def test_bad_arguments_fail_early() -> None:
    with pytest.raises(ValueError, match="anomaly_source"):
        tiny_grad(anomaly_source="perlin")
    with pytest.raises(ValueError, match="negative_margin"):
        tiny_grad(negative_margin="one_sided")
    with pytest.raises(ValueError, match="normal_epochs"):
        tiny_grad(normal_epochs=0)


def test_batch_type_is_what_the_loader_yields() -> None:
    batch = next(iter(loader(make_items(2, 1, seed=0))))
    assert isinstance(batch, Batch) and batch.mask.shape == (3, IMAGE, IMAGE)
