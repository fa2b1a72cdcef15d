import torch

from dcr_mllm.objectives.augment import AugmentConfig, positive_view

IDENTITY = dict(
    crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0
)


def identity(x):
    return x


def test_identity_settings_return_the_image():
    images = torch.rand(4, 3, 16, 16)
    out = positive_view(images, identity, AugmentConfig(**IDENTITY), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_default_view_is_random_but_repeatable_and_in_range():
    images = torch.rand(8, 3, 16, 16)
    cfg = AugmentConfig()
    a = positive_view(images, identity, cfg, torch.Generator().manual_seed(1))
    b = positive_view(images, identity, cfg, torch.Generator().manual_seed(1))
    c = positive_view(images, identity, cfg, torch.Generator().manual_seed(2))
    assert a.shape == images.shape and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, images)


def test_horizontal_flip_only_mirrors_columns():
    images = torch.rand(2, 3, 8, 8)
    out = positive_view(images, identity, AugmentConfig(**{**IDENTITY, "hflip": 1.0}), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images.flip(-1), atol=1e-5, rtol=0)


def test_pixel_mode_never_flips_vertically_upstream_mode_does():
    images = torch.rand(64, 3, 8, 8)
    cfg = AugmentConfig(**IDENTITY)
    pixel = positive_view(images, identity, cfg, torch.Generator().manual_seed(0))
    cfg.mode = "upstream"
    upstream = positive_view(images, identity, cfg, torch.Generator().manual_seed(0))
    flipped = [torch.allclose(upstream[i], images[i].flip(-2), atol=1e-5) for i in range(64)]
    assert not any(torch.allclose(pixel[i], images[i].flip(-2), atol=1e-5) for i in range(64))
    assert 10 < sum(flipped) < 54


def test_upstream_mode_clamps_after_normalisation():
    """Upstream jitters the normalised tensor, so negative normalised values are clamped to 0."""
    images = torch.full((2, 3, 8, 8), 0.1)
    cfg = AugmentConfig(**{**IDENTITY, "mode": "upstream", "brightness": 0.1})
    out = positive_view(images, lambda x: (x - 0.5) / 0.25, cfg, torch.Generator().manual_seed(0))
    assert out.min() >= 0  # the true normalised value is -1.6
