"""CRAD: optimiser set-up, switches, feature cache, and learning on synthetic data.

The synthetic task: normal images are vertical stripes at a random phase; anomalies replace a
square with horizontal stripes of the same amplitude and colour, so the untrained model cannot
tell them apart by feature magnitude (its AUROC is near chance) and any detection is learned.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from anomaly_bench.models.components.refinement import upsample_map
from anomaly_bench.models.crad import CRAD, CRADHead
from anomaly_bench.types import collate_items

SIZE = 64
TINY = dict(backbone="tiny", layers=(1, 2), pretrained=False, image_size=SIZE, fusion_blocks=2,
            fusion_expansion_ratio=0.5)


pytestmark = pytest.mark.usefixtures("single_thread")


def stripe_items(n: int, anomalous: bool, seed: int, size: int = SIZE) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    colour = torch.tensor([1.0, 0.5, -0.5])[:, None, None]
    items = []
    for i in range(n):
        phase = float(torch.rand(1, generator=g)) * 2 * math.pi
        image = torch.sin(xx / 3.0 + phase) * colour + 0.1 * torch.randn(3, size, size, generator=g)
        mask = torch.zeros(size, size)
        if anomalous:
            s = int(torch.randint(10, 18, (1,), generator=g))
            y, x = (int(torch.randint(0, size - s, (1,), generator=g)) for _ in range(2))
            image[:, y:y + s, x:x + s] = (torch.sin(yy / 3.0 + phase) * colour)[:, y:y + s, x:x + s]
            mask[y:y + s, x:x + s] = 1.0
        items.append(dict(image=image, label=int(anomalous), mask=mask, orig_size=(size, size),
                          category="stripes", defect="rotated" if anomalous else "good",
                          path=f"{'bad' if anomalous else 'good'}_{seed}_{i}.png"))
    return items


def quiet_trainer(**kwargs) -> L.Trainer:
    args = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False)
    args.update(kwargs)
    return L.Trainer(**args)


def no_callbacks(model: CRAD) -> CRAD:
    model.configure_callbacks = lambda: []  # this file checks the model alone, not the Evaluator
    return model


class StripesData(L.LightningDataModule):
    def __init__(self, deterministic: bool) -> None:
        super().__init__()
        self.deterministic = deterministic

    @property
    def deterministic_train(self) -> bool:
        return self.deterministic

    def train_dataloader(self) -> DataLoader:
        return DataLoader(stripe_items(8, False, 0), batch_size=4, shuffle=True, collate_fn=collate_items)


@pytest.fixture(scope="module")
def trained():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.set_num_threads(1)
        model = no_callbacks(CRAD(**TINY, lr=1e-2, feature_cache="memory"))
        untrained = no_callbacks(CRAD(**TINY))
        loader = DataLoader(stripe_items(32, False, 0), batch_size=8, shuffle=True, collate_fn=collate_items)
        quiet_trainer(max_epochs=20).fit(model, loader)
    test = collate_items(stripe_items(16, False, 1) + stripe_items(16, True, 2))
    return model.eval(), untrained.eval(), test


def test_end_to_end_training_detects_synthetic_anomalies(trained):
    model, untrained, test = trained
    with torch.no_grad():
        out, before = model(test.image), untrained(test.image)
    assert out.anomaly_map.shape == (32, SIZE, SIZE) and out.pred_score.shape == (32,)
    auroc = roc_auc_score(test.label.numpy(), out.pred_score.numpy())
    auroc_before = roc_auc_score(test.label.numpy(), before.pred_score.numpy())
    assert auroc > 0.9, f"trained image AUROC {auroc:.3f}"
    assert auroc > auroc_before + 0.2, f"training did not help: {auroc_before:.3f} -> {auroc:.3f}"
    assert model.feature_cache.misses == 32 and model.feature_cache.hits == 32 * 19  # features computed once


def test_identity_shortcut_is_avoided(trained):
    """After training on normals, the reconstruction error is larger inside defects than outside."""
    model, untrained, test = trained
    bad = test.label == 1
    ratios = {}
    for name, m in (("trained", model), ("untrained", untrained)):
        with torch.no_grad():
            d = upsample_map(m.model.distance(test.image[bad]), (SIZE, SIZE))
        mask = test.mask[bad] > 0
        ratios[name] = (d[mask].mean() / d[~mask].mean()).item()
    assert ratios["trained"] > 1.5, ratios
    assert ratios["untrained"] < 1.2, ratios  # the property is learned, not given by the features


def test_parameter_groups_learning_rates_and_schedule():
    model = CRAD(**TINY)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["grids"]["lr"] == 0.1 and groups["networks"]["lr"] == 1e-3
    assert all(g["weight_decay"] == 0.01 for g in optimizer.param_groups)
    head = model.model.head
    assert {id(p) for p in groups["grids"]["params"]} == {id(head.grids.local_grid.grid), id(head.grids.global_grid.grid)}
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_groups == {id(p) for p in head.parameters()}  # backbone excluded, nothing forgotten
    assert not any(id(p) in in_groups for p in model.model.feature_extractor.parameters())
    assert config["lr_scheduler"]["interval"] == "epoch"
    # official: scheduler.step(epoch) after epoch `epoch`, so epoch e trains at gamma ** ((e - 1) // 40):
    # epochs 0..40 at the base rate, the first decayed epoch is 41 (a plain StepLR decays at 40)
    lrs = []
    for _ in range(42):
        lrs.append(groups["networks"]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[40] == pytest.approx(1e-3) and lrs[41] == pytest.approx(1e-4)
    assert groups["grids"]["lr"] == pytest.approx(0.01)


def test_gradient_clipping_defaults_to_official_norm():
    model = no_callbacks(CRAD(**TINY))
    seen = []
    original = model.clip_gradients

    def spy(optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        original(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
        seen.append((gradient_clip_val, gradient_clip_algorithm, norm.item()))

    model.clip_gradients = spy
    loader = DataLoader(stripe_items(4, False, 0), batch_size=4, collate_fn=collate_items)
    quiet_trainer(max_steps=1).fit(model, loader)
    assert seen and seen[0][0] == 0.1 and seen[0][1] == "norm"
    assert seen[0][2] <= 0.1 + 1e-5


def test_jitter_active_only_in_training():
    torch.manual_seed(0)
    model = CRAD(**TINY, jitter_p=1.0)
    x = torch.randn(2, 3, SIZE, SIZE)
    feats = model.model.extract_features(x)
    model.train()
    a, b = model.model.reconstruct(feats).normal, model.model.reconstruct(feats).normal
    assert not torch.allclose(a, b)
    model.eval()
    a, b = model.model.reconstruct(feats).normal, model.model.reconstruct(feats).normal
    torch.testing.assert_close(a, b)
    model.train()
    off = CRAD(**TINY, use_jitter=False).train()
    torch.testing.assert_close(off.model.reconstruct(feats).normal, off.model.reconstruct(feats).normal)


def test_ablation_switches_change_the_architecture():
    x = torch.randn(2, 40, 16, 16)
    local_only = CRADHead(40, 16, 16, use_global=False, fusion_blocks=1, fusion_expansion_ratio=0.5)
    assert not hasattr(local_only.grids, "global_grid") and local_only.grids.out_channels == 40
    assert local_only(x).refined.shape == x.shape
    global_only = CRADHead(40, 16, 16, use_local=False, fusion="basic", fusion_blocks=1)
    assert not hasattr(global_only.grids, "local_grid") and global_only(x).normal.shape == x.shape
    plain = CRADHead(40, 16, 16, use_refinement=False, fusion_blocks=1).eval()
    out = plain(x)
    assert out.similarity is None and out.refined is out.normal
    dims = CRADHead(40, 16, 16, local_dim=3, global_dim=1, local_resolution=4, global_resolution=16, fusion_blocks=1)
    assert dims.grids.local_grid.grid.shape == (1, 40, 4, 4, 4)
    assert dims.grids.global_grid.grid.shape == (1, 40 * 16 * 16, 1, 16)
    assert dims(x).refined.shape == x.shape


def test_official_head_size_and_initialisation():
    torch.manual_seed(0)
    head = CRADHead(216, 28, 28)  # EfficientNet-B4 at 224 px
    n_params = sum(p.numel() for p in head.parameters())
    assert 15.0e6 < n_params < 15.8e6  # ~15.4 M by the official configuration
    small = CRADHead(216, 28, 28, fusion_expansion_ratio=0.5)
    assert small.fusion[0].expand[0].out_channels == 216 and head.fusion[0].expand[0].out_channels == 864
    assert len(head.fusion) == 11
    conv = head.fusion[0].expand[0].weight
    assert abs(conv.std().item() - 0.01) < 0.001 and abs(conv.mean().item()) < 0.001
    assert head.grids.local_coords.net[0].bias.abs().max() == 0
    expected_grid_std = math.sqrt(2 / (217 * 64))
    assert abs(head.grids.local_grid.grid.std().item() - expected_grid_std) / expected_grid_std < 0.05


def test_feature_cache_modes():
    # auto: on when the datamodule says training is deterministic, off otherwise
    for deterministic, expected in ((True, True), (False, False)):
        model = no_callbacks(CRAD(**TINY))
        quiet_trainer(max_epochs=2).fit(model, datamodule=StripesData(deterministic))
        assert model.feature_cache.enabled is expected
        assert model.feature_cache.misses == (8 if expected else 0) and model.feature_cache.hits == (8 if expected else 0)
    forced = no_callbacks(CRAD(**TINY, feature_cache="memory"))
    with pytest.raises(ValueError, match="deterministic_train"):
        quiet_trainer(max_epochs=1).fit(forced, datamodule=StripesData(False))
    with pytest.raises(ValueError, match="feature_cache"):
        CRAD(**TINY, feature_cache="gpu")
    with pytest.raises(ValueError, match="feature_cache_dir"):
        CRAD(**TINY, feature_cache="disk")


def test_disk_cache_reuses_exact_features(tmp_path):
    model = no_callbacks(CRAD(**TINY, feature_cache="disk", feature_cache_dir=str(tmp_path)))
    quiet_trainer(max_epochs=2).fit(model, datamodule=StripesData(True))
    assert len(list(tmp_path.glob("**/*.pt"))) == 8
    assert model.feature_cache.misses == 8 and model.feature_cache.hits == 8
    batch = collate_items(stripe_items(8, False, 0)[:2])
    stored = model.feature_cache.features(batch, model.model.extract_features)
    torch.testing.assert_close(stored, model.model.extract_features(batch.image))


def test_wrong_image_size_is_a_clear_error():
    model = CRAD(**TINY).eval()
    with pytest.raises(ValueError, match="image_size"):
        model(torch.randn(1, 3, 2 * SIZE, 2 * SIZE))
