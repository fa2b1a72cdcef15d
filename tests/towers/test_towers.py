"""Every tower family through one interface: shapes, normalisation, LoRA, save/load round trips."""

import open_clip
import pytest
import torch
from transformers import CLIPModel, CLIPVisionModel, SiglipVisionModel

from dcr_mllm.errors import DcrError
from dcr_mllm.towers import apply_lora, inspect_tower, load_tower, merge_lora
from dcr_mllm.towers.lora import LoraSettings, lora_module_names

FAMILIES = ["clip", "siglip", "open_clip"]


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_shapes_and_features(tiny, family):
    spec = inspect_tower(tiny[family])
    tower = load_tower(tiny[family])
    pixels = tower.normalize(torch.rand(2, 3, 40, 40))  # any input size is resized to the tower's
    assert pixels.shape == (2, 3, spec.image_size, spec.image_size)
    assert tower.global_embedding(pixels).shape == (2, spec.global_dim)
    assert tower.patch_features(pixels, layer=-2).shape == (2, spec.num_patches, spec.hidden_size)
    assert spec.has_cls == (family != "siglip")


def test_siglip_uses_its_own_normalisation(tiny):
    siglip, clip = load_tower(tiny["siglip"]), load_tower(tiny["clip"])
    gray = torch.full((1, 3, 32, 32), 0.5)
    assert torch.allclose(siglip.normalize(gray), torch.zeros(1)), "SigLIP maps 0.5 to 0 with mean = std = 0.5"
    assert not torch.allclose(clip.normalize(gray), torch.zeros(1))


def test_clip_global_embedding_is_projected_pooler_output(tiny):
    tower = load_tower(tiny["clip"])
    reference = CLIPModel.from_pretrained(tiny["clip"])
    pixels = tower.normalize(torch.rand(2, 3, 32, 32))
    expected = reference.visual_projection(reference.vision_model(pixel_values=pixels).pooler_output)
    torch.testing.assert_close(tower.global_embedding(pixels), expected)


def test_patch_features_match_hidden_states_without_cls(tiny):
    tower = load_tower(tiny["clip"])
    pixels = tower.normalize(torch.rand(1, 3, 32, 32))
    hidden = CLIPVisionModel.from_pretrained(tiny["clip"])(pixel_values=pixels, output_hidden_states=True).hidden_states
    torch.testing.assert_close(tower.patch_features(pixels, layer=-2), hidden[-2][:, 1:])


def test_vision_only_tower_gives_the_same_embedding(tiny):
    for family in FAMILIES:
        full, vision = load_tower(tiny[family]), load_tower(tiny[family], vision_only=True)
        pixels = full.normalize(torch.rand(2, 3, 32, 32))
        torch.testing.assert_close(full.global_embedding(pixels), vision.global_embedding(pixels))
        assert sum(p.numel() for p in vision.parameters()) < sum(p.numel() for p in full.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_only_adapters_and_merges_exactly(tiny, family, tmp_path):
    tower = load_tower(tiny[family])
    names = apply_lora(tower, LoraSettings(r=4, alpha=8, dropout=0.0))
    assert names and all(n.rsplit(".", 1)[-1] in tower.default_lora_targets for n in names)
    trainable = [n for n, p in tower.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for name, param in tower.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)  # a trained adapter is not zero
    pixels = tower.normalize(torch.rand(2, 3, 32, 32))
    with torch.no_grad():
        adapted = tower.global_embedding(pixels)
    assert merge_lora(tower) == len(names)
    assert not any("lora_" in n for n, _ in tower.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(tower.global_embedding(pixels), adapted, atol=1e-5, rtol=1e-5)
    tower.save(tmp_path / "saved")
    with torch.no_grad():
        torch.testing.assert_close(
            load_tower(tmp_path / "saved").global_embedding(pixels), adapted, atol=1e-5, rtol=1e-5
        )


def test_saved_towers_load_with_the_familys_own_loader(tiny, tmp_path):
    pixels = torch.rand(1, 3, 32, 32)
    clip = load_tower(tiny["clip"])
    clip.save(tmp_path / "clip")
    assert (tmp_path / "clip" / "preprocessor_config.json").is_file() and (tmp_path / "clip" / "vocab.json").is_file()
    assert not list((tmp_path / "clip").glob("*.bin")) and not list((tmp_path / "clip").glob(".*"))
    torch.testing.assert_close(
        CLIPVisionModel.from_pretrained(tmp_path / "clip")(pixel_values=clip.normalize(pixels)).pooler_output,
        clip.model.vision_model(pixel_values=clip.normalize(pixels)).pooler_output,
    )
    siglip = load_tower(tiny["siglip"])
    siglip.save(tmp_path / "siglip")
    SiglipVisionModel.from_pretrained(tmp_path / "siglip")
    oc = load_tower(tiny["open_clip"])
    oc.save(tmp_path / "oc")
    reloaded = open_clip.create_model("local-dir:" + str(tmp_path / "oc"))
    torch.testing.assert_close(reloaded.encode_image(oc.normalize(pixels)), oc.global_embedding(oc.normalize(pixels)))


def test_text_side_scores_statements(tiny):
    for family in FAMILIES:
        tower = load_tower(tiny[family])
        text = tower.encode_text(["a photo of a red circle", "a photo of two blue squares"])
        assert text.shape == (2, tower.spec.global_dim)


def test_lora_target_that_matches_nothing_is_named(tiny):
    tower = load_tower(tiny["clip"])
    with pytest.raises(DcrError, match="LoRA target 'qkv' matches no module.*choose among: fc1, fc2, k_proj"):
        lora_module_names(tower, ["qkv"])


def test_not_a_tower_directory(tmp_path):
    with pytest.raises(DcrError, match="not a tower directory"):
        inspect_tower(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(DcrError, match="model_type 'bert'"):
        inspect_tower(tmp_path)
    with pytest.raises(DcrError, match="not a preset name and no such local path"):
        inspect_tower(tmp_path / "missing")


def _family_model(family, path):
    """The family's own model, image transform and tokenizer call, loaded without dcr-mllm."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    if family == "open_clip":
        model, _, transform = open_clip.create_model_and_transforms("local-dir:" + str(path))
        tokenizer = open_clip.get_tokenizer("local-dir:" + str(path))
        return model, lambda images: torch.stack([transform(i) for i in images]), tokenizer
    processor, tokenizer = AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    return (
        AutoModel.from_pretrained(path),
        lambda images: processor(images=images, return_tensors="pt").pixel_values,
        tokenizer,
    )


def _scenes():
    import random

    from dcr_mllm.data.synthetic import make_pair

    (_, first), (_, second) = make_pair(random.Random(0), 48, "color")
    return [first, second.resize((40, 56))]  # a non-square image exercises resize and crop


@pytest.mark.parametrize("family", FAMILIES)
def test_preprocess_is_the_familys_own_eval_transform(tiny, family):
    _, transform, _ = _family_model(family, tiny[family])
    images = _scenes()
    pixels = load_tower(tiny[family]).preprocess(images)
    assert pixels.shape == (2, 3, 32, 32)
    torch.testing.assert_close(pixels, transform(images))


@pytest.mark.parametrize("family", FAMILIES)
def test_logit_scale_and_bias_give_the_familys_own_logits(tiny, family):
    tower = load_tower(tiny[family])
    model, transform, tokenizer = _family_model(family, tiny[family])
    with torch.no_grad():
        for m in (tower.model, model):  # a trained-looking scale, and a bias where the family has one
            m.logit_scale.fill_(2.5)
            if family == "siglip":
                m.logit_bias.fill_(-3.0)
        texts = ["a photo of a red cat", "a photo of two green dogs"]
        images = _scenes()
        if family == "open_clip":
            image_features, text_features, scale = model(transform(images), tokenizer(texts))[:3]
            expected = scale * text_features @ image_features.T
        elif family == "siglip":  # SigLIP: max-length padding and no attention mask, as it was trained
            ids = tokenizer(texts, padding="max_length", max_length=64, return_tensors="pt").input_ids
            expected = model(input_ids=ids, pixel_values=transform(images)).logits_per_text
        else:
            expected = model(
                **tokenizer(texts, padding=True, return_tensors="pt"), pixel_values=transform(images)
            ).logits_per_text
        image = torch.nn.functional.normalize(tower.global_embedding(tower.preprocess(images)), dim=-1)
        text = torch.nn.functional.normalize(tower.encode_text(texts), dim=-1)
        logits = text @ image.T * tower.logit_scale() + tower.logit_bias()
    assert tower.logit_bias() == (-3.0 if family == "siglip" else 0.0)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_a_vision_only_tower_has_no_logit_scale(tiny):
    for family in FAMILIES:
        with pytest.raises(DcrError, match="vision-only"):
            load_tower(tiny[family], vision_only=True).logit_scale()
