"""GLAD end to end on tiny random-init parts: CFG, loading paths, τ calibration, fit + scoring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomaly_bench.models.components.diffusion import (
    DiffusionLoadError, build_random, load_diffusion, save_diffusion,
)
from anomaly_bench.models.glad import GLAD
from anomaly_bench.models.glad.dino import DinoLoadError, build_vit
from anomaly_bench.types import Batch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The CI box has 2 shared cores: oversubscribed BLAS threads are 5x slower than one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_glad(size: int = 16, **overrides) -> GLAD:
    kwargs = dict(
        diffusion="tiny", dino="tiny", tiny_image_size=size, unet_width=16, dino_resolution=size,
        score_layers=(1, 2, 3, 4), ads_layer=4, guidance_scale=1.0, num_inference_steps=4, t_start=400,
        t_min=150, blur_sigma=1.0, score_top_k=10, lr=2e-3, calibration_images=8, evaluator=False, visualizer=False,
    )
    kwargs.update(overrides)
    return GLAD(**kwargs)


def make_batch(images: torch.Tensor, labels: torch.Tensor, category: str = "toy", prefix: str = "img") -> Batch:
    n, _, h, w = images.shape
    return Batch(image=images, label=labels, mask=torch.zeros(n, h, w), orig_size=torch.full((n, 2), h),
                 category=[category] * n, defect=["good"] * n, path=[f"{prefix}{i}" for i in range(n)])


def test_cfg_combines_conditional_and_unconditional_predictions():
    torch.manual_seed(0)
    model = tiny_glad(guidance_scale=9.0).model.eval()
    z = torch.randn(2, 3, 16, 16)
    t = torch.full((2,), 300)
    with torch.no_grad():
        cond = model._unet(z, t, model.prompt_embeds.expand(2, -1, -1))
        uncond = model._unet(z, t, model.negative_prompt_embeds.expand(2, -1, -1))
        guided = model.predict_noise(z, 300)
    assert torch.allclose(guided, uncond + 9.0 * (cond - uncond), atol=1e-4)
    model.guidance_scale = 1.0
    with torch.no_grad():
        assert torch.allclose(model.predict_noise(z, 300), cond, atol=1e-5)


def test_frozen_parts_stay_frozen_and_optimizer_sees_only_the_unet():
    module = tiny_glad(tiny_vae=True)
    module.train()
    assert not module.model.codec.training and not module.model.dino.training
    trainable = {id(p) for p in module.model.unet.parameters()}
    optimised = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert optimised == trainable
    assert not any(p.requires_grad for p in module.model.dino.parameters())
    assert not any(p.requires_grad for p in module.model.codec.parameters())


def test_tiny_vae_path_reconstructs_and_scores():
    torch.manual_seed(0)
    module = tiny_glad(tiny_vae=True).eval()
    out = module(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert out.anomaly_map.shape == (2, 16, 16) and torch.isfinite(out.pred_score).all()


def test_local_folder_round_trip_and_clear_errors(tmp_path: Path):
    torch.manual_seed(0)
    parts = build_random("tiny", image_size=16, unet_width=16)
    save_diffusion(parts, tmp_path / "sd")
    loaded = load_diffusion(str(tmp_path / "sd"), use_vae=False)
    for (name, a), b in zip(parts.unet.state_dict().items(), loaded.unet.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(loaded.prompt_embeds, parts.prompt_embeds)
    with pytest.raises(DiffusionLoadError, match="VAE"):  # no vae/ subfolder in a pixel-space model
        load_diffusion(str(tmp_path / "sd"), use_vae=True)
    with pytest.raises(DiffusionLoadError, match="neither an existing folder nor a hub id"):
        load_diffusion(str(tmp_path / "missing"))
    with pytest.raises(DinoLoadError, match="not found"):
        build_vit("vit_base_patch8_224.dino", weights=str(tmp_path / "dino.pth"))


def test_bad_configuration_names_the_key():
    with pytest.raises(ValueError, match=r"category_params\['screw'\] has unknown keys \['threshold'\]"):
        tiny_glad(category_params={"screw": {"threshold": 0.3}})
    with pytest.raises(ValueError, match="tau_mode"):
        tiny_glad(tau_mode="test-set")
    with pytest.raises(ValueError, match=r"object_masks\['screw'\]"):
        tiny_glad(object_masks={"screw": "dark"})
    with pytest.raises(ValueError, match="DINO layer 12"):
        tiny_glad(ads_layer=12)


def test_category_table_overrides_defaults_and_groups_by_t_start():
    module = tiny_glad(tau_mode="table", category_params={"a": {"t_start": 200, "tau": 0.1}, "b": {"t_min": 300}})
    assert module.params_for("a")["t_start"] == 200 and module.params_for("a")["tau"] == 0.1
    assert module.params_for("b")["t_start"] == 400 and module.params_for("b")["t_min"] == 300
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    batch = make_batch(images, torch.zeros(4, dtype=torch.long))
    batch.category = ["a", "b", "a", "b"]
    out = module.eval().score_batch(batch)
    assert out.pred_score.shape == (4,)
    stops = module.last_stop_steps.tolist()  # a: steps 151,101,51,1 ; b: 301,201,101,1
    assert stops[0] in (151, 101, 51, 1) and stops[1] in (301, 201, 101, 1)


def test_calibrated_tau_is_never_exceeded_by_its_own_normals_and_survives_checkpoints():
    torch.manual_seed(0)
    module = tiny_glad(tau_quantile=1.0).eval()
    normals = torch.rand(4, 3, 16, 16) * 2 - 1
    tau = module.calibrate_tau({"toy": normals})["toy"]
    assert tau > 0
    module.score_batch(make_batch(normals, torch.zeros(4, dtype=torch.long)))
    assert module.last_stop_steps.tolist() == [101] * 4  # all re-anchored at the first t < t_min
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    fresh = tiny_glad()
    fresh.on_load_checkpoint(checkpoint)
    assert fresh.params_for("toy")["tau"] == tau


# ----------------------------------------------------------------------------- end to end
def _toy_images(n: int, size: int, generator: torch.Generator, anomalous: bool = False) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    base = torch.stack([0.5 * torch.sin(3 * xx), 0.5 * torch.cos(3 * yy), 0.3 * xx * yy])
    images = (base[None] + 0.05 * torch.randn(n, 3, size, size, generator=generator)).clamp(-1, 1)
    if anomalous:
        k = size // 4
        for i in range(n):
            r, c = torch.randint(0, size - k, (2,), generator=generator).tolist()
            images[i, :, r : r + k, c : c + k] = torch.rand(3, 1, 1, generator=generator) * 2 - 1
    return images


def _auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()
    return float(wins.mean())


def test_tiny_fit_then_scoring_is_far_above_chance():
    torch.manual_seed(0)
    size, g = 24, torch.Generator().manual_seed(0)
    module = tiny_glad(size, num_inference_steps=8, t_start=600, t_min=250, ads_top_k=3)
    optimizer = module.configure_optimizers()
    module.log = lambda *args, **kwargs: None  # no Trainer attached in this manual loop
    train = _toy_images(48, size, g)
    module.train()
    for step in range(70):
        idx = torch.randint(0, len(train), (8,), generator=g)
        batch = make_batch(train[idx], torch.zeros(8, dtype=torch.long))
        batch.path = [f"train{int(i)}" for i in idx]
        loss = module.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.model.unet.parameters(), 1.0)
        optimizer.step()
    assert float(loss.detach()) < 0.5
    module.calibrate_tau({c: torch.stack(list(s.values())) for c, s in module._reservoir.items()})
    module.eval()
    images = torch.cat([_toy_images(12, size, g), _toy_images(12, size, g, anomalous=True)])
    labels = torch.tensor([0] * 12 + [1] * 12)
    out = module.score_batch(make_batch(images, labels))
    assert out.anomaly_map.shape == (24, size, size)
    assert _auroc(out.pred_score, labels) > 0.75
    assert set(module.last_stop_steps.tolist()) <= set(range(600))  # every image stopped searching


def test_local_dino_weights_file_is_loaded(tmp_path: Path):
    import timm

    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    torch.save(reference.state_dict(), tmp_path / "vit.pth")
    loaded = build_vit("vit_tiny_patch16_224", weights=str(tmp_path / "vit.pth"))
    for (name, a), b in zip(reference.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_trainer_fit_stopping_mid_epoch_calibrates_tau(tmp_path: Path):
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from anomaly_bench.types import collate_items

    g = torch.Generator().manual_seed(1)
    items = [dict(image=img, label=0, mask=torch.zeros(16, 16), orig_size=(16, 16), category="toy",
                  defect="good", path=f"n{i}") for i, img in enumerate(_toy_images(12, 16, g))]
    loader = DataLoader(items, batch_size=4, collate_fn=collate_items)
    module = tiny_glad()
    trainer = Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, enable_checkpointing=False)
    trainer.fit(module, loader)  # 3 batches per epoch: stops inside the first epoch
    assert trainer.global_step == 2
    assert set(module.calibrated_tau) == {"toy"} and module.calibrated_tau["toy"] > 0
