"""The space-to-depth latent codec of the tiny diffusion models (GLAD's 128 px demo)."""

from __future__ import annotations

import pytest
import torch

from anomaly_bench.models.components.diffusion import SpaceToDepthCodec, build_random, load_diffusion


def test_codec_is_exactly_invertible_and_folds_blocks_into_channels():
    codec = SpaceToDepthCodec(4)
    images = torch.rand(2, 3, 16, 12) * 2 - 1
    latents = codec.encode(images)
    assert latents.shape == (2, 48, 4, 3)
    assert torch.equal(codec.decode(latents), images)
    # one latent cell holds exactly the pixels of its 4 x 4 block
    assert torch.equal(latents[0, 0:16, 1, 2].reshape(4, 4), images[0, 0, 4:8, 8:12])


def test_tiny_unet_runs_on_the_folded_grid():
    parts = build_random("tiny", image_size=32, unet_width=8, space_to_depth=4)
    assert isinstance(parts.codec, SpaceToDepthCodec)
    latents = parts.codec.encode(torch.zeros(1, 3, 32, 32))
    out = parts.unet(latents, torch.tensor([10]), encoder_hidden_states=parts.prompt_embeds).sample
    assert out.shape == (1, 48, 8, 8)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="divisible by 4"):
        SpaceToDepthCodec(4).encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="without tiny_vae"):
        build_random("tiny", image_size=32, tiny_vae=True, space_to_depth=2)
    with pytest.raises(ValueError, match="needs diffusion 'tiny'"):
        load_diffusion("some/hub-id", space_to_depth=2)


def test_glad_scores_at_full_resolution_with_a_folded_latent():
    from anomaly_bench.models.glad.torch_model import GLADModel

    model = GLADModel(diffusion="tiny", tiny_image_size=32, tiny_space_to_depth=4, unet_width=8, dino="tiny",
                      dino_resolution=32, score_layers=[1, 2], ads_layer=2, score_top_k=4, blur_sigma=1.0,
                      guidance_scale=1.0, num_inference_steps=2, t_start=100, t_min=50).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert model.unet.config.in_channels == 48 and model.unet.config.sample_size == 8
    loss = model.training_loss(images, images)
    assert torch.isfinite(loss)
    output = model(images)
    assert output.anomaly_map.shape == (2, 32, 32) and torch.isfinite(output.pred_score).all()


def _input_output_jacobian_rank(unet_width: int) -> int:
    """Rank of d(UNet output)/d(UNet input) on a 2 x 2 folded grid (8 px images, 48 latent channels)."""
    parts = build_random("tiny", image_size=8, unet_width=unet_width, space_to_depth=4)
    unet = parts.unet.double().eval()
    latents = torch.randn(1, 48, 2, 2, dtype=torch.double, generator=torch.Generator().manual_seed(0))

    def noise_prediction(x: torch.Tensor) -> torch.Tensor:
        return unet(x, torch.tensor([10]), encoder_hidden_states=parts.prompt_embeds.double()).sample

    jacobian = torch.autograd.functional.jacobian(noise_prediction, latents).reshape(192, 192)
    return int(torch.linalg.matrix_rank(jacobian))


def test_a_unet_narrower_than_its_latent_cannot_pass_every_channel_through(caplog):
    # Every path from input to output starts at conv_in's unet_width channels per cell, so on 4 cells
    # the output can move in at most 4 * width of its 4 * 48 directions: at low noise, where ε must
    # be read off the input, the rest of the noise is unpredictable (the 128 px GLAD demo's loss
    # floored at 0.38 with width 32 on 48 channels; 0.19 with width 48: models/glad/README.md).
    with caplog.at_level("WARNING", logger="anomaly_bench.models.components.diffusion"):
        assert _input_output_jacobian_rank(16) <= 4 * 16
    assert "unet_width 16 is narrower than its 48 latent channels" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="anomaly_bench.models.components.diffusion"):
        # full but for the 8 group means that the GroupNorm before conv_out removes
        assert _input_output_jacobian_rank(48) == 4 * 48 - 8
    assert "narrower" not in caplog.text
