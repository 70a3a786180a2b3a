"""GLAD's scoring-DINO fine-tuning (the official VisA / PCB-Bank recipe): the loss by hand, which
parameters train, the pairs, and that a fit's checkpoint carries both DINOs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomaly_bench.models.glad import GLAD, GLADModel
from anomaly_bench.models.glad.dino_finetune import (
    finetune_loss, finetune_scoring_dino, make_pairs, score_block_mlps,
)


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_model(**overrides) -> GLADModel:
    kwargs = dict(diffusion="tiny", dino="tiny", tiny_image_size=16, unet_width=16, dino_resolution=16,
                  score_layers=(2, 4), ads_layer=4, guidance_scale=1.0, num_inference_steps=4, t_start=400,
                  t_min=150, blur_sigma=1.0, score_top_k=10)
    kwargs.update(overrides)
    return GLADModel(**kwargs).eval()


def textured(n: int, generator: torch.Generator, size: int = 16) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    base = torch.stack([0.5 * torch.sin(6 * xx), 0.5 * torch.cos(5 * yy), 0.3 * xx * yy])
    return (base[None] + 0.1 * torch.randn(n, 3, size, size, generator=generator)).clamp(-1, 1)


# ------------------------------------------------------------------------------ the loss
def test_loss_is_one_minus_the_cosine_of_whole_token_maps_plus_the_anchor_term():
    a = torch.zeros(2, 3, 4)
    a[:, 0, 0] = 1.0  # each image's map is one vector: e_0
    b = torch.zeros(2, 3, 4)
    b[:, 1, 2] = 5.0  # orthogonal to a, another length
    # per block: mean over the batch of 1 - cos = 1; two blocks -> 2
    assert float(finetune_loss([a, a], [b, b], [a, a], [b, b], anchor_weight=0.0)) == pytest.approx(2.0)
    # identical maps cost nothing, also when they equal the originals
    assert float(finetune_loss([a], [a * 3], [a], [a], anchor_weight=0.5)) == pytest.approx(0.0, abs=1e-7)
    # the anchor: λ·[(1 - cos(F_in, F0_in)) + (1 - cos(F_rec, F0_rec))] = 0.5·(1 + 0) on top of 1 - cos(a, b) = 1
    assert float(finetune_loss([a], [b], [b], [b], anchor_weight=0.5)) == pytest.approx(1.5)
    # one cosine per image over the whole map, not a mean over tokens: here the per-token mean of
    # 1 - cos would be (0 + 1) / 2 = 0.5, the whole-map one is 1 - 1 / (sqrt(2) sqrt(101))
    c = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    d = torch.tensor([[[1.0, 0.0], [0.0, 10.0]]])
    assert float(finetune_loss([c], [d], [c], [d], 0.0)) == pytest.approx(1 - 1 / (2 ** 0.5 * 101 ** 0.5))


def test_only_the_mlps_of_the_score_blocks_are_trained():
    model = tiny_model()
    params = score_block_mlps(model.dino, [4, 2, 2])
    expected = {id(p) for b in (1, 3) for p in model.dino.vit.blocks[b].mlp.parameters()}
    assert {id(p) for p in params} == expected and len(params) == len(expected)


# ------------------------------------------------------------------------------ the pairs
def test_noised_input_pairs_are_the_input_noised_to_the_start_step():
    model = tiny_model(tiny_space_to_depth=2)  # an exactly invertible codec: pixels = latents, folded
    images = textured(3, torch.Generator().manual_seed(0))
    t = 150
    partner = make_pairs(model, images, "any", "noised_input", t, torch.Generator().manual_seed(7))
    latents = model.codec.encode(images, sample=False)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(7))
    alpha_bar = model.alphas_cumprod[t]
    expected = model.codec.decode(alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise)
    assert torch.allclose(partner, expected, atol=1e-6)
    assert torch.allclose(model.codec.decode(latents), images, atol=1e-6)  # the codec loses nothing


def test_reconstruction_pairs_start_at_the_category_t_min_without_ads():
    model = tiny_model(category_params={"a": {"t_min": 100}})
    calls = []
    original = model.reconstruct
    model.reconstruct = lambda images, t_start, tau, t_min, **kw: calls.append((t_start, kw)) or original(
        images, t_start, tau, t_min, **kw)
    images = textured(2, torch.Generator().manual_seed(0))
    out = make_pairs(model, images, "a", "reconstruction", None, torch.Generator().manual_seed(0))
    make_pairs(model, images, "b", "reconstruction", None, torch.Generator().manual_seed(0))
    make_pairs(model, images, "b", "reconstruction", 60, torch.Generator().manual_seed(0))
    assert [c[0] for c in calls] == [100, 150, 60]
    assert all(c[1]["use_ads"] is False for c in calls)
    assert out.shape == images.shape and not torch.equal(out, images)


# ------------------------------------------------------------------------ the fine-tuning
def test_finetuning_pulls_normals_and_their_reconstructions_together_and_leaves_ads_alone():
    torch.manual_seed(0)
    model = tiny_model()
    with pytest.raises(RuntimeError, match="separate_ads_dino"):
        finetune_scoring_dino(model, {"toy": textured(4, torch.Generator())}, epochs=1)
    model.separate_ads_dino()
    before = {k: v.clone() for k, v in model.dino.vit.state_dict().items()}
    original = {k: v.clone() for k, v in model.frozen_ads_dino.vit.state_dict().items()}
    normals = textured(16, torch.Generator().manual_seed(1))
    uint8 = ((normals + 1) * 127.5).round().to(torch.uint8)  # what the Lightning module keeps
    entered: list[int] = []

    class Precision:  # stands in for the trainer's precision context: the pairs are made inside it
        def __enter__(self):
            entered.append(1)

        def __exit__(self, *exc):
            return False

    with torch.inference_mode():  # Lightning may call it under inference mode or no_grad
        losses = finetune_scoring_dino(model, {"toy": uint8}, epochs=6, lr=3e-3, batch_size=8, seed=0,
                                       pair_context=Precision)
    assert entered == [1, 1]  # once per chunk of 8 normals
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    changed = {k for k, v in model.dino.vit.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("blocks.1.mlp.", "blocks.3.mlp.")) for k in changed), changed
    for k, v in model.frozen_ads_dino.vit.state_dict().items():
        assert torch.equal(v, original[k]), k  # ADS keeps measuring drift with the original
    assert not any(p.requires_grad for p in model.dino.parameters())
    assert all(p.grad is None for p in model.dino.parameters())

    # held-out normals: their maps against their reconstructions are lower than with the original DINO
    test = textured(6, torch.Generator().manual_seed(2))
    recon = model.reconstruct(test, 150, torch.full((6,), float("inf")), torch.zeros(6, dtype=torch.long),
                              use_ads=False, generator=torch.Generator().manual_seed(3)).images
    tuned = model.anomaly_map(test, recon).mean()
    scoring = model.dino
    model.dino = model.frozen_ads_dino
    plain = model.anomaly_map(test, recon).mean()
    model.dino = scoring
    assert float(tuned) < 0.7 * float(plain)


def test_the_kept_normals_serve_both_calibration_and_finetuning():
    options = dict(diffusion="tiny", dino="tiny", tiny_image_size=16, unet_width=16, dino_resolution=16,
                   score_layers=(4,), ads_layer=4, calibration_images=16)
    assert GLAD(**options)._reservoir_size() == 16
    assert GLAD(**options, dino_finetune_epochs=1, dino_finetune_images=40)._reservoir_size() == 40
    assert GLAD(**options, dino_finetune_epochs=1, dino_finetune_images=None)._reservoir_size() == float("inf")
    assert GLAD(**options, dino_finetune_images=None)._reservoir_size() == 16  # no fine-tuning: no extra images


def test_bad_finetuning_options_name_the_key():
    with pytest.raises(ValueError, match="dino_finetune_pairs"):
        GLAD(diffusion="tiny", dino="tiny", tiny_image_size=16, unet_width=16, dino_resolution=16,
             score_layers=(4,), ads_layer=4, dino_finetune_pairs="denoised")
    with pytest.raises(ValueError, match="dino_finetune_epochs"):
        GLAD(diffusion="tiny", dino="tiny", tiny_image_size=16, unet_width=16, dino_resolution=16,
             score_layers=(4,), ads_layer=4, dino_finetune_epochs=-1)


# -------------------------------------------------------------------------- Lightning fit
def test_fit_finetunes_once_before_the_last_validation_and_checkpoint_and_any_checkpoint_loads_either_way(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from anomaly_bench.models.glad import lightning_model
    from anomaly_bench.types import collate_items

    runs: list[int] = []
    real = lightning_model.finetune_scoring_dino
    monkeypatch.setattr(lightning_model, "finetune_scoring_dino",
                        lambda model, *args, **kwargs: runs.append(1) or real(model, *args, **kwargs))

    def module(**overrides) -> GLAD:
        kwargs = dict(diffusion="tiny", dino="tiny", tiny_image_size=16, unet_width=16, dino_resolution=16,
                      score_layers=(2, 4), ads_layer=4, guidance_scale=1.0, num_inference_steps=4, t_start=400,
                      t_min=150, blur_sigma=1.0, score_top_k=10, lr=2e-3, calibration_images=4)
        kwargs.update(overrides)
        m = GLAD(**kwargs)
        m.configure_callbacks = lambda: []
        return m

    g = torch.Generator().manual_seed(1)
    items = [dict(image=img, label=0, mask=torch.zeros(16, 16), orig_size=(16, 16), category="toy",
                  defect="good", path=f"n{i}") for i, img in enumerate(textured(8, g))]
    loader = DataLoader(items, batch_size=4, collate_fn=collate_items)
    val = DataLoader(items[:4], batch_size=4, collate_fn=collate_items)
    torch.manual_seed(0)
    tuned = module(dino_finetune_epochs=2, dino_finetune_lr=3e-3, dino_finetune_batch_size=4, dino_finetune_images=6)
    original = {k: v.clone() for k, v in tuned.model.dino.state_dict().items()}
    at_validation: list[bool] = []
    tuned.on_validation_epoch_start = lambda: at_validation.append(
        any(not torch.equal(v, original[k]) for k, v in tuned.model.dino.state_dict().items()))
    trainer = Trainer(max_epochs=2, check_val_every_n_epoch=2, num_sanity_val_steps=0, accelerator="cpu",
                      logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    trainer.fit(tuned, loader, val)
    assert runs == [1]  # once per fit
    assert at_validation == [True]  # the final validation already scores with the fine-tuned DINO
    assert {len(s) for s in tuned._reservoir.values()} == {6}  # max(calibration_images, dino_finetune_images)
    assert set(tuned.calibrated_tau) == {"toy"}
    assert all(torch.equal(v, original[k]) for k, v in tuned.model.frozen_ads_dino.state_dict().items())

    # last.ckpt (written after that validation) holds the fine-tuned DINO and the original for ADS;
    # loaded into a module configured without fine-tuning, both come back
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    plain = module()
    plain.on_load_checkpoint(checkpoint)
    plain.load_state_dict(checkpoint["state_dict"], strict=True)
    assert plain.model.frozen_ads_dino is not None
    for k, v in tuned.model.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, plain.model.state_dict()[k]), k
    # a checkpoint without fine-tuning into a module configured with it: ADS gets the saved original
    bare = module()
    state = {"state_dict": bare.state_dict()}
    wants = module(dino_finetune_epochs=1)
    wants.on_load_checkpoint(state)
    wants.load_state_dict(state["state_dict"], strict=True)
    for k, v in bare.model.dino.state_dict().items():
        assert torch.equal(wants.model.frozen_ads_dino.state_dict()[k], v), k
