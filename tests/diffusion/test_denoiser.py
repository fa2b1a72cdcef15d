"""The frozen denoiser bundle: targets per scheduler, the cached empty prompt, projector checks."""

import pytest
import torch
from diffusers import DDPMScheduler
from transformers import AutoTokenizer, CLIPTextModel

from dcr_mllm.diffusion import (
    ConditionProjector,
    FrozenDenoiser,
    check_sd_dir,
    check_widths,
    unet_cross_attention_dim,
)
from dcr_mllm.errors import ConfigError, DcrError
from dcr_mllm.presets import build_tiny_sd


@pytest.fixture(scope="module")
def denoiser(tiny):
    return FrozenDenoiser.from_pretrained(tiny["sd"])


def test_empty_prompt_embedding_is_cached_and_text_encoder_dropped(tiny, denoiser):
    tokenizer = AutoTokenizer.from_pretrained(tiny["sd"], subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(tiny["sd"], subfolder="text_encoder")
    ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    torch.testing.assert_close(denoiser.empty_context, encoder(ids)[0])
    assert not any(isinstance(m, CLIPTextModel) for m in denoiser.modules())
    assert "empty_context" not in denoiser.state_dict(), "a constant, not a checkpointed weight"
    assert all(not p.requires_grad for p in denoiser.parameters())


def test_noise_matches_the_scheduler(tiny, denoiser):
    scheduler = DDPMScheduler.from_pretrained(tiny["sd"], subfolder="scheduler")
    latents, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    timesteps = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(
        denoiser.add_noise(latents, noise, timesteps), scheduler.add_noise(latents, noise, timesteps)
    )
    torch.testing.assert_close(
        denoiser.target(latents, noise, timesteps, "velocity"), scheduler.get_velocity(latents, noise, timesteps)
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_auto_target_follows_the_scheduler(tmp_path, prediction_type):
    denoiser = FrozenDenoiser.from_pretrained(build_tiny_sd(tmp_path / "sd", prediction_type=prediction_type))
    latents, noise, timesteps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([3, 700])
    expected = {
        "epsilon": noise,
        "sample": latents,
        "v_prediction": denoiser.scheduler.get_velocity(latents, noise, timesteps),
    }[prediction_type]
    torch.testing.assert_close(denoiser.target(latents, noise, timesteps, "auto"), expected)


def test_encode_gives_scaled_latents_and_predict_runs(denoiser):
    images = torch.rand(2, 3, 32, 32)
    latents = denoiser.encode(images, torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 8, 8)
    context = denoiser.empty_context.expand(2, -1, -1)
    assert denoiser.predict(latents, torch.tensor([1, 2]), context).shape == latents.shape
    denoiser.train()
    assert not denoiser.training, "the frozen denoiser never switches to training mode"


def test_projector_output_is_added_to_the_empty_context(denoiser):
    projector = ConditionProjector(16, denoiser.cross_attention_dim)
    for layer in (projector.net[1], projector.net[3]):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    context = projector(torch.randn(3, 16), denoiser.empty_context)
    assert context.shape == (3, 77, denoiser.cross_attention_dim)
    torch.testing.assert_close(context, denoiser.empty_context.expand(3, -1, -1))
    with pytest.raises(ConfigError, match="expects 16-wide"):
        projector(torch.randn(3, 8), denoiser.empty_context)


def test_width_checks_name_both_numbers(tiny):
    assert unet_cross_attention_dim(tiny["sd"]) == 32
    with pytest.raises(ConfigError, match="projector output width 64 does not match the UNet cross-attention width 32"):
        check_widths(16, 16, 64, 32)
    with pytest.raises(
        ConfigError, match="projector input width 8 does not match the tower's global embedding width 16"
    ):
        check_widths(16, 8, 32, 32)


def test_incomplete_sd_directory(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(DcrError, match="lacks vae/, scheduler/, text_encoder/, tokenizer/"):
        check_sd_dir(tmp_path)
