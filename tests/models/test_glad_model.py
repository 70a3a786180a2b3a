"""GLAD end to end on tiny random-init parts: CFG, loading paths, τ calibration, fit + scoring, and the
official behaviours the torch model must keep (frozen ADS DINO, raw reconstruction, saved per-category state)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import anomaly_bench
from anomaly_bench.models.components.diffusion import (
    DiffusionLoadError, build_random, load_diffusion, save_diffusion,
)
from anomaly_bench.models.glad import GLAD, GLADModel
from anomaly_bench.models.glad.dino import DinoLoadError, build_vit
from anomaly_bench.models.glad.scoring import gaussian_blur, imagenet_normalize, pixel_l1_term
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
        t_min=150, blur_sigma=1.0, score_top_k=10, lr=2e-3, calibration_images=8,
    )
    kwargs.update(overrides)
    module = GLAD(**kwargs)
    module.configure_callbacks = lambda: []  # a bare model: no run folders, metrics or pictures
    return module


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
    model = module.model
    assert model.params_for("a")["t_start"] == 200 and model.params_for("a")["tau"] == 0.1
    assert model.params_for("b")["t_start"] == 400 and model.params_for("b")["t_min"] == 300
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    batch = make_batch(images, torch.zeros(4, dtype=torch.long))
    batch.category = ["a", "b", "a", "b"]
    out = module.eval().score_batch(batch)
    assert out.pred_score.shape == (4,)
    stops = model.last_stop_steps.tolist()  # a: steps 151,101,51,1 ; b: 301,201,101,1
    assert stops[0] in (151, 101, 51, 1) and stops[1] in (301, 201, 101, 1)


def test_calibrated_tau_is_never_exceeded_by_its_own_normals_and_survives_checkpoints():
    torch.manual_seed(0)
    module = tiny_glad(tau_quantile=1.0).eval()
    normals = torch.rand(4, 3, 16, 16) * 2 - 1
    tau = module.calibrate_tau({"toy": normals})["toy"]
    assert tau > 0
    module.score_batch(make_batch(normals, torch.zeros(4, dtype=torch.long)))
    assert module.model.last_stop_steps.tolist() == [101] * 4  # all re-anchored at the first t < t_min
    checkpoint: dict = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    fresh = tiny_glad()
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    assert fresh.model.params_for("toy")["tau"] == tau


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
    assert set(module.model.last_stop_steps.tolist()) <= set(range(600))  # every image stopped searching


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


# ------------------------------------------------------------------ torch model on its own
def tiny_model(**overrides) -> GLADModel:
    kwargs = dict(diffusion="tiny", dino="tiny", tiny_image_size=16, unet_width=16, dino_resolution=16,
                  score_layers=(1, 2, 3, 4), ads_layer=4, guidance_scale=1.0, num_inference_steps=4, t_start=400,
                  t_min=150, blur_sigma=1.0, score_top_k=10)
    kwargs.update(overrides)
    return GLADModel(**kwargs).eval()


def test_torch_model_imports_without_lightning():
    """Every anomaly_bench module the torch model reaches, followed import by import, avoids Lightning."""
    root = Path(anomaly_bench.__file__).parent.parent
    todo, seen, found = ["anomaly_bench.models.glad.torch_model"], set(), set()
    while todo:
        name = todo.pop()
        path = root / (name.replace(".", "/") + ".py")
        if name in seen or not path.is_file():
            path = root / name.replace(".", "/") / "__init__.py"
            if name in seen or not path.is_file():
                continue
        seen.add(name)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            found.update(n.split(".")[0] for n in names)
            todo.extend(n for n in names if n.startswith("anomaly_bench"))
    assert "anomaly_bench.models.glad.categories" in seen and "anomaly_bench.models.components.diffusion" in seen
    assert not found & {"lightning", "pytorch_lightning"}, sorted(seen)


def test_ads_dino_is_a_frozen_copy_of_the_original_when_the_scoring_dino_is_finetuned(tmp_path: Path):
    torch.manual_seed(0)
    plain = tiny_model()
    # official: without fine-tuned weights ADS and scoring see the same pretrained DINO
    assert plain.ads_dino is plain.dino and plain.frozen_ads_dino is None
    assert not any(k.startswith("frozen_ads_dino.") for k in plain.state_dict())
    finetuned = {k: v + 0.05 * torch.randn_like(v) for k, v in plain.dino.vit.state_dict().items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in finetuned.items()}}, tmp_path / "dino_ft.pth")

    torch.manual_seed(0)  # the same random "original" DINO as `plain`
    model = tiny_model(scoring_dino_weights=str(tmp_path / "dino_ft.pth"))
    assert model.ads_dino is model.frozen_ads_dino and model.ads_dino is not model.dino
    for name, value in model.frozen_ads_dino.vit.state_dict().items():
        assert torch.equal(value, plain.dino.vit.state_dict()[name]), name  # ADS keeps the original
    for name, value in model.dino.vit.state_dict().items():
        assert torch.equal(value, finetuned[name]), name  # scoring uses the fine-tuned weights
    model.train()
    assert not model.frozen_ads_dino.training and not any(p.requires_grad for p in model.frozen_ads_dino.parameters())
    model.eval()

    calls: list[tuple[str, list[int]]] = []
    for role, dino in (("ads", model.frozen_ads_dino), ("scoring", model.dino)):
        original_forward = dino.forward
        dino.forward = lambda images, blocks, _f=original_forward, _r=role: calls.append((_r, list(blocks))) or _f(images, blocks)
    model(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert ("ads", [4]) in calls and ("scoring", [1, 2, 3, 4]) in calls
    assert {blocks == [4] for role, blocks in calls if role == "ads"} == {True}
    assert [c for c in calls if c[0] == "scoring"] == [("scoring", [1, 2, 3, 4])]  # scoring DINO never inside ADS

    with pytest.raises(DinoLoadError, match="scoring_dino_weights"):
        tiny_model(scoring_dino_weights=str(tmp_path / "missing.pth"))
    torch.save({"blocks.0.norm1.weight": torch.ones(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth: does not fit the DINO ViT"):
        tiny_model(scoring_dino_weights=str(tmp_path / "other.pth"))


def test_reconstruction_is_scored_raw_not_clamped():
    torch.manual_seed(0)
    model = tiny_model(use_ads=False)
    codec_decode = model.codec.decode
    model.codec.decode = lambda latents: 4.0 * codec_decode(latents) + 2.0  # far outside [-1, 1]
    seen: list[torch.Tensor] = []
    dino_forward = model.dino.forward
    model.dino.forward = lambda images, blocks: seen.append(images.detach().clone()) or dino_forward(images, blocks)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    model(images)
    raw = model.reconstruct(images, 400, torch.zeros(2), torch.zeros(2), use_ads=False,
                            generator=torch.Generator().manual_seed(model.inference_seed)).images
    assert float(raw.max()) > 1.5  # the reconstruction itself is not clamped ...
    assert torch.allclose(seen[0][2:], imagenet_normalize(raw), atol=1e-5)  # ... nor on its way to DINO
    model.clamp_reconstruction = True  # what version 0.1 did (kept for its checkpoints)
    clamped = model.reconstruct(images, 400, torch.zeros(2), torch.zeros(2), use_ads=False,
                                generator=torch.Generator().manual_seed(model.inference_seed)).images
    assert torch.equal(clamped, raw.clamp(-1, 1))


def test_several_reconstructions_average_the_maps_of_successive_noise_draws():
    torch.manual_seed(0)
    model = tiny_model(num_reconstructions=3)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    out = model(images)
    generator = torch.Generator().manual_seed(model.inference_seed)
    params = [model.params_for(None)] * 2
    draws = []
    for _ in range(3):  # the draws follow one another from one generator
        recon, stops = model.reconstruct_categories(images, params, generator)
        draws.append(model.anomaly_map(images, recon))
        if len(draws) == 1:
            first_stops = stops
    assert not torch.allclose(draws[0], draws[1])  # each draw reconstructs differently ...
    assert torch.allclose(out.anomaly_map, torch.stack(draws).mean(0), atol=1e-6)  # ... and the map is their mean
    assert torch.allclose(out.pred_score, model.image_score(torch.stack(draws).mean(0)), atol=1e-6)
    assert torch.equal(model.last_stop_steps, first_stops)
    model.num_reconstructions = 1  # one draw is exactly the official single reconstruction
    assert torch.allclose(model(images).anomaly_map, draws[0], atol=1e-6)
    with pytest.raises(ValueError, match="num_reconstructions must be >= 1"):
        tiny_model(num_reconstructions=0)


def test_state_dict_restores_what_fit_learned_and_the_config_keeps_the_rest():
    """The calibrated τ (learned in fit) comes from the saved state; the tables, masks and seed are
    options, and the configured ones win over a checkpoint's (as everywhere: issue 17)."""
    torch.manual_seed(0)
    options = dict(category_params={"a": {"t_start": 200, "tau": 0.1, "pixel_l1_weight": 2.0}, "b": {"t_min": 300}},
                   bidirectional_categories=["a"], object_masks={"b": "otsu_inverted"}, inference_seed=7)
    model = tiny_model(**options)
    model.table.calibrated_tau["b"] = 0.25
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    categories = ["a", "b", "a", "b"]
    expected = model(images, categories)

    torch.manual_seed(0)
    same = tiny_model(**options)  # built with the same options, as the CLI does from the config
    same.load_state_dict(model.state_dict(), strict=True)
    assert same.params_for("b")["tau"] == 0.25  # learned: restored
    restored = same(images, categories)
    assert torch.equal(restored.pred_score, expected.pred_score)
    assert torch.equal(restored.anomaly_map, expected.anomaly_map)

    torch.manual_seed(0)
    other = tiny_model(inference_seed=3)  # other options: they win, the calibration is still restored
    other.load_state_dict(model.state_dict(), strict=True)
    assert other.params_for("a")["t_start"] == 400 and other.inference_seed == 3
    assert other.params_for("b")["tau"] == 0.25
    other.table.use_calibrated_tau = False  # what tau_mode: table sets
    assert other.params_for("b")["tau"] == 0.4


def test_images_without_categories_score_as_the_one_calibrated_category():
    torch.manual_seed(0)
    model = tiny_model(category_params={"capsule": {"t_start": 200}})
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    model(images)
    assert set(model.last_stop_steps.tolist()) <= {301, 201, 101, 1}  # scalar defaults: T_start 400
    model.table.calibrated_tau["capsule"] = float("inf")  # never triggers: re-anchored below t_min
    assert torch.equal(model(images).pred_score, model(images, ["capsule", "capsule"]).pred_score)
    assert model.last_stop_steps.tolist() == [101, 101]  # T_start 200 -> steps 151, 101: first t < 150


def test_pixel_l1_term_compares_imagenet_normalised_images():
    torch.manual_seed(0)
    model = tiny_model()
    images, recon = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    weights = torch.tensor([0.0, 3.0])
    without = model.anomaly_map(images, recon)
    blur_sigma, model.blur_sigma = model.blur_sigma, 0.0
    unblurred = model.anomaly_map(images, recon)
    model.blur_sigma = blur_sigma
    term = pixel_l1_term(imagenet_normalize(images), imagenet_normalize(recon), unblurred, weights)
    assert torch.allclose(model.anomaly_map(images, recon, weights), gaussian_blur(unblurred + term, blur_sigma),
                          atol=1e-5)
    assert torch.allclose(model.anomaly_map(images, recon, weights)[0], without[0], atol=1e-6)  # v = 0: no term
    # on [-1, 1] pixels instead the per-channel weights differ, and so would the map
    other = pixel_l1_term(images, recon, unblurred, weights)
    assert not torch.allclose(term[1], other[1], atol=1e-4)


def test_object_mask_zeroes_the_map_away_from_the_object():
    torch.manual_seed(0)
    model = tiny_model(object_masks={"obj": "otsu"}, blur_sigma=1.0)
    images = torch.full((2, 3, 16, 16), -0.9)
    images[:, :, :4, :4] = 0.9  # a bright object in the top-left corner of a dark image
    mask = model.object_mask(images, ["obj", "free"])
    assert mask.shape == (2, 16, 16) and float(mask.min()) >= 0 and float(mask.max()) <= 1 + 1e-6
    assert float(mask[0, :2, :2].min()) > 0.99 and float(mask[0, 12:, 12:].max()) == 0.0  # blurred twice, σ 1
    assert torch.allclose(mask[1], torch.ones(16, 16), atol=1e-5)  # a category without a mask rule: whole map
    assert model.object_mask(images, ["free", None]) is None
    out = model(images, ["obj", "free"])
    assert float(out.anomaly_map[0, 12:, 12:].abs().max()) == 0.0 and float(out.anomaly_map[1, 12:, 12:].max()) > 0
