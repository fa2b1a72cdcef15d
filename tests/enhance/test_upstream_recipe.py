"""Upstream DCR's recipe (boyuh/DCR, commit c16d885) as configs: stages/configs/upstream/enhance_*.yaml.

``BASE`` transcribes upstream's yaml configs and training scripts, one row per value with the file
and the line it came from in each upstream family's files; ``DIFFERENCES`` holds each backbone's
own values; ``UPSTREAM`` expands them per backbone, and each upstream config is held against it. The behavioural tests check
that the options those configs switch on do what upstream's code does: torchvision's transforms
with the same random draws, PEFT's LoRA scope and bias, the masked empty prompt.
"""

import dataclasses
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer, SiglipModel

from dcr_mllm.config import load_config
from dcr_mllm.data import ImageTextShards, write_synthetic_shards
from dcr_mllm.data.images import random_resized_square
from dcr_mllm.diffusion import FrozenDenoiser
from dcr_mllm.enhance.config import EnhanceConfig, resolve_config, validate
from dcr_mllm.enhance.export import export_tower
from dcr_mllm.enhance.recipe import build_model
from dcr_mllm.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from dcr_mllm.objectives.augment import UPSTREAM_VFLIP, AugmentConfig, positive_view
from dcr_mllm.presets.real import BACKBONES
from dcr_mllm.towers import apply_lora, load_tower, merge_lora
from dcr_mllm.towers.lora import LoraSettings
from dcr_mllm.training.optim import build_optimizer, lr_lambda

REPO = Path(__file__).resolve().parents[2]
CLIP_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "visual_projection"]
SIGLIP_TARGETS = ["k_proj", "v_proj", "q_proj", "out_proj", "fc1", "fc2"]  # boyuh/DCR train_SigLIP_stage2.py:123
TV_RATIO = inspect.signature(transforms.RandomResizedCrop).parameters["ratio"].default  # torchvision's (3/4, 4/3)

# fmt: off
#: where each upstream family keeps its recipe (boyuh/DCR, commit c16d885): "stage1"/"stage2" are
#: train_configs/train_<family>_<tag>_stage<n>.yaml, "train1"/"train2" train_<family>_stage<n>.py,
#: "bank" clip_models/CLIP_bank.py (one class per family), "data" image_datasets/dataset_cc3m.py
UPSTREAM_FAMILY = {  # our backbone -> (upstream family, the tag of its stage configs)
    "clip_l14_224": ("OpenAICLIP", "224"), "clip_l14_336": ("OpenAICLIP", "336"), "metaclip_l14": ("MetaCLIP", "L"),
    "metaclip_h14": ("MetaCLIP", "H"), "siglip_so400m_224": ("SigLIP", "224"), "siglip_so400m_384": ("SigLIP", "384"),
}
FAMILIES = ("OpenAICLIP", "MetaCLIP", "SigLIP")
#: what every backbone's recipe says: (our key, upstream's value, file, its line in the OpenAICLIP, MetaCLIP and SigLIP file)
BASE = [
    ("tower.image_size", 224, "stage1", 5, 5, 5),
    ("projector.output_dim", 1024, "stage1", 12, 13, 12),
    ("projector.hidden_dim", 1024, "stage1", 12, 13, 12),
    ("denoiser", 'sd-2.1', "stage1", 10, 10, 10),
    ("projector_stage.micro_batch_size", 16, "stage1", 3, 3, 3),
    ("projector_stage.max_steps", 100000, "stage1", 18, 19, 18),
    ("projector_stage.lr", 0.0001, "stage1", 19, 20, 19),
    ("projector_stage.scheduler", 'constant', "stage1", 20, 21, 20),
    ("projector_stage.betas[0]", 0.9, "stage1", 22, 23, 22),
    ("projector_stage.betas[1]", 0.999, "stage1", 23, 24, 23),
    ("projector_stage.weight_decay", 0.01, "stage1", 24, 25, 24),
    ("projector_stage.adam_eps", 1e-08, "stage1", 25, 26, 25),
    ("projector_stage.grad_clip", 1.0, "stage1", 28, 29, 28),
    ("projector_stage.precision", 'bf16', "stage1", 30, 31, 30),
    ("projector_stage.save_every", 20000, "stage1", 31, 32, 31),
    ("projector_stage.grad_accum", 2, "stage1", 35, 36, 35),
    ("projector_stage.lr_warmup_steps", 10, "stage1", 21, 22, 21),
    ("lora_stage.micro_batch_size", 16, "stage2", 3, 3, 3),
    ("lora_stage.max_steps", 4600, "stage2", 25, 26, 25),
    ("lora_stage.lr", 1e-05, "stage2", 26, 27, 26),
    ("lora_stage.scheduler", 'constant', "stage2", 27, 28, 27),
    ("lora_stage.betas[0]", 0.9, "stage2", 29, 30, 29),
    ("lora_stage.betas[1]", 0.999, "stage2", 30, 31, 30),
    ("lora_stage.weight_decay", 0.01, "stage2", 31, 32, 31),
    ("lora_stage.adam_eps", 1e-08, "stage2", 32, 33, 32),
    ("lora_stage.grad_clip", 1.0, "stage2", 35, 36, 35),
    ("lora_stage.precision", 'bf16', "stage2", 37, 38, 37),
    ("lora_stage.save_every", 500, "stage2", 38, 39, 38),
    ("lora_stage.grad_accum", 2, "stage2", 42, 43, 42),
    ("lora_stage.lr_warmup_steps", 10, "stage2", 28, 29, 28),
    ("lora.r", 16, "stage2", 15, 16, 15),
    ("lora.alpha", 16, "stage2", 16, 17, 16),
    ("lora.dropout", 0.1, "stage2", 17, 18, 17),
    ("lora.bias", 'lora_only', "stage2", 18, 19, 18),
    ("objective.target", 'velocity', "train1", 265, 260, 260),
    ("objective.tau", 0.1, "train1", 266, 261, 261),
    ("normalization.mean", [0.48145466, 0.4578275, 0.40821073], "train1", 54, 54, 54),
    ("normalization.std", [0.26862954, 0.26130258, 0.27577711], "train1", 55, 55, 55),
    ("lora.target_modules", 'all-linear', "train2", 129, 123, 123),
    ("objective.empty_prompt_mask", True, "bank", 50, 189, 119),
    ("objective.augment.brightness", 0.1, "bank", 34, 173, 99),
    ("objective.augment.contrast", 0.1, "bank", 34, 173, 99),
    ("objective.augment.saturation", 0.1, "bank", 34, 173, 99),
    ("objective.augment.hue", 0.05, "bank", 34, 173, 99),
    ("objective.augment.hflip", 0.5, "bank", 35, 174, 100),
    ("objective.augment.vflip", 0.5, "bank", 36, 175, 101),
    ("objective.augment.crop_scale", (0.9, 1.0), "bank", 39, 178, 104),
    ("objective.augment.crop_ratio", (0.9, 1.1), "bank", 40, 179, 105),
    ("data.crop_scale", (0.9, 1.0), "data", 109, 109, 109),
]
#: each backbone's values that differ from BASE (same file and line)
DIFFERENCES = {
    "clip_l14_336": {"tower.image_size": 336},
    "metaclip_l14": {"lora_stage.max_steps": 100000},
    "metaclip_h14": {"lora_stage.max_steps": 100000},
    "siglip_so400m_224": {"lora_stage.save_every": 20000, "lora.target_modules": ['k_proj', 'v_proj', 'q_proj', 'out_proj', 'fc1', 'fc2']},
    "siglip_so400m_384": {"tower.image_size": 384, "lora_stage.save_every": 20000, "lora.target_modules": ['k_proj', 'v_proj', 'q_proj', 'out_proj', 'fc1', 'fc2']},
}
# fmt: on


def upstream_rows(backbone: str) -> list[tuple[str, object, str]]:
    """(our key, upstream's value, "boyuh/DCR FILE:LINE") for every row of ``backbone``'s recipe."""
    family, tag = UPSTREAM_FAMILY[backbone]
    files = {
        "stage1": f"train_configs/train_{family}_{tag}_stage1.yaml",
        "stage2": f"train_configs/train_{family}_{tag}_stage2.yaml",
        "train1": f"train_{family}_stage1.py",
        "train2": f"train_{family}_stage2.py",
        "bank": "clip_models/CLIP_bank.py",
        "data": "image_datasets/dataset_cc3m.py",
    }
    changed = DIFFERENCES.get(backbone, {})
    return [
        (key, changed.get(key, value), f"boyuh/DCR {files[role]}:{lines[FAMILIES.index(family)]}")
        for key, value, role, *lines in BASE
    ]


UPSTREAM = {backbone: upstream_rows(backbone) for backbone in UPSTREAM_FAMILY}


def _get(cfg, key):
    node = cfg
    for part in key.replace("[", ".").replace("]", "").split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _same(ours, upstream):
    if isinstance(upstream, (list, tuple)):
        return list(ours) == pytest.approx(list(upstream))
    return ours == pytest.approx(upstream) if isinstance(upstream, float) else ours == upstream


def check_row(cfg: EnhanceConfig, key: str, upstream) -> None:
    """Our config holds upstream's value, or the setting that has upstream's effect."""
    if key == "tower.image_size":  # the VAE and both views at the tower's resolution
        assert BACKBONES[cfg.tower].image_size == upstream
        assert cfg.data.image_size == 0 and cfg.objective.vae_image_size == 0
    elif key == "denoiser":  # "sd-2.1", with boyuh/DCR README.md:59 recommending SD 2.1-base
        assert upstream == "sd-2.1" and cfg.denoiser == "sd21-base"
    elif key.endswith(".lr_warmup_steps"):  # get_scheduler("constant") drops num_warmup_steps
        from diffusers.optimization import get_scheduler

        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.AdamW([param], lr=1.0)
        schedule = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=upstream, num_training_steps=100)
        assert schedule.get_last_lr() == [1.0]
        stage = _get(cfg, key.split(".")[0])
        assert stage.scheduler == "constant" and lr_lambda(stage)(0) == 1.0
    elif key.endswith(".adam_eps"):  # the optimizer the engine builds from this stage's settings
        optimizer = build_optimizer(torch.nn.Linear(2, 2), _get(cfg, key.split(".")[0]))
        assert all(group["eps"] == upstream for group in optimizer.param_groups)
    elif key.startswith("normalization."):
        ours = OPENAI_CLIP_MEAN if key.endswith("mean") else OPENAI_CLIP_STD
        assert cfg.data.normalization == "openai_clip" and _same(ours, upstream)
    elif key == "lora.target_modules":  # "all-linear" is held against PEFT in test_lora_scope_is_peft_s
        assert cfg.lora.scope == "vision"
        assert cfg.lora.targets == (CLIP_ALL_LINEAR if upstream == "all-linear" else upstream)
    elif key == "objective.augment.vflip":
        assert cfg.objective.augment.mode == "upstream" and upstream == UPSTREAM_VFLIP
    elif key == "data.crop_scale":  # RandomResizedCrop(image_size, scale=...) with the default ratio
        assert cfg.data.base_view == "random_resized_crop" and _same(cfg.data.crop_scale, upstream)
        assert _same(cfg.data.crop_ratio, TV_RATIO)
    else:
        assert _same(_get(cfg, key), upstream), f"{key}: ours {_get(cfg, key)!r}, upstream {upstream!r}"


@pytest.mark.parametrize("backbone", sorted(UPSTREAM))
def test_upstream_config_holds_upstreams_values(backbone):
    cfg = resolve_config(
        load_config(EnhanceConfig, REPO / "stages" / "configs" / "upstream" / f"enhance_{backbone}.yaml")
    )
    for key, upstream, source in UPSTREAM[backbone]:
        try:
            check_row(cfg, key, upstream)
        except AssertionError as err:
            raise AssertionError(f"{key} ({source}): {err}") from err
    assert cfg.objective.augment.mode == "upstream" and cfg.objective.chunk_size == 0
    assert (
        cfg.projector_stage.deepspeed == cfg.lora_stage.deepspeed == str(REPO / "stages" / "deepspeed" / "zero2.json")
    )


def _upstream_compose(size):
    """boyuh/DCR clip_models/CLIP_bank.py:33-42, verbatim."""
    return transforms.Compose(
        [
            transforms.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.05),
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomVerticalFlip(p=0.5),
            transforms.RandomResizedCrop(size=(size, size), scale=(0.9, 1.0), ratio=(0.9, 1.1)),
        ]
    )


def test_upstream_positive_view_is_torchvisions_compose_given_the_same_draws():
    """Upstream seeds torch's global RNG nowhere; drawn from a generator with the same seed, the view is identical."""
    normalize = transforms.Normalize(
        OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    )  # the view is taken after this (CLIP_bank.py:62-65)
    images = torch.rand(6, 3, 20, 20)
    cfg = AugmentConfig(mode="upstream")
    for seed in range(4):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            expected = torch.stack([_upstream_compose(20)(image) for image in normalize(images)])
        ours = positive_view(images, normalize, cfg, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert (expected == 0).any() and (normalize(images) < 0).any()  # ColorJitter's clamp cut negative values


def test_base_view_is_torchvisions_random_resized_crop():
    """boyuh/DCR image_datasets/dataset_cc3m.py:109: RandomResizedCrop(img_size, scale=(0.9, 1.0), BICUBIC) on the PIL image."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (37, 50, 3), dtype=np.uint8))
    reference = transforms.RandomResizedCrop(24, scale=(0.9, 1.0), interpolation=transforms.InterpolationMode.BICUBIC)
    for seed in range(4):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            expected = np.asarray(reference(image))
        ours = np.asarray(random_resized_square(image, 24, ((0.9, 1.0), TV_RATIO), torch.Generator().manual_seed(seed)))
        np.testing.assert_array_equal(ours, expected)


def test_shards_take_repeatable_random_crops(tmp_path):
    write_synthetic_shards(tmp_path, 8, samples_per_shard=4, image_size=40, seed=0)
    crop = ((0.9, 1.0), TV_RATIO)

    def images(**kwargs):
        return torch.stack([s["image"] for s in ImageTextShards(tmp_path, 32, shuffle=False, **kwargs)])

    centre, cropped = images(), images(random_crop=crop)
    assert cropped.shape == centre.shape == (8, 3, 32, 32)
    torch.testing.assert_close(images(random_crop=crop), cropped)
    assert not torch.allclose(cropped, centre) and not torch.allclose(images(random_crop=crop, seed=1), cropped)


def _vision_side(names):
    return sorted(n.replace(".base_layer", "") for n in names if not n.startswith(("text_model", "text_projection")))


def upstream_lora(family: str) -> LoraSettings:
    """Upstream's LoRA, on the vision side: r 4, no dropout, its targets, its biases."""
    targets = CLIP_ALL_LINEAR if family == "clip" else SIGLIP_TARGETS
    return LoraSettings(r=4, alpha=4, dropout=0.0, targets=list(targets), scope="vision", bias="lora_only")


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_lora_scope_is_peft_s_on_the_whole_model(tiny, family):
    """Upstream: get_peft_model(CLIPModel, all-linear) / get_peft_model(SiglipModel, SIGLIP_TARGETS), bias lora_only
    (boyuh/DCR train_OpenAICLIP_stage2.py:126-133, train_SigLIP_stage2.py:122-126). Restricted to the vision side,
    its adapters and trainable biases are ours; SigLIP's fused head out_proj keeps only its bias, which is all
    that trains there upstream (nn.MultiheadAttention never calls the LoRA layer)."""
    from peft import LoraConfig, get_peft_model

    model_class, targets = (CLIPModel, "all-linear") if family == "clip" else (SiglipModel, SIGLIP_TARGETS)
    peft_model = get_peft_model(
        model_class.from_pretrained(tiny[family]),
        LoraConfig(r=4, lora_alpha=4, target_modules=targets, bias="lora_only"),
    )
    inner = peft_model.base_model.model
    image_features = inner.get_image_features(pixel_values=torch.rand(2, 3, 32, 32))
    getattr(image_features, "pooler_output", image_features).square().sum().backward()
    peft_lora = {n for n, p in inner.named_parameters() if "lora_" in n and p.grad is not None}
    peft_bias = {n for n, p in inner.named_parameters() if p.requires_grad and "lora_" not in n}

    tower = load_tower(tiny[family])
    names = apply_lora(tower, upstream_lora(family))
    ours = {n for n, p in tower.model.named_parameters() if p.requires_grad}
    assert _vision_side(n for n in peft_lora) == sorted(n for n in ours if "lora_" in n)
    assert _vision_side(peft_bias) == sorted(n.replace(".base_layer", "") for n in ours if "lora_" not in n)
    assert ("visual_projection" in names) == (family == "clip")
    assert family == "clip" or "vision_model.head.mlp.fc1" in names


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_vision_only_training_equals_peft_on_the_whole_model(tiny, family):
    """One AdamW step (weight decay 0.01) through the image path: the whole-model PEFT run of upstream and our
    vision-only tower end with the same vision weights, and upstream's text-side adapters never move."""
    from peft import LoraConfig, get_peft_model

    model_class, targets = (CLIPModel, "all-linear") if family == "clip" else (SiglipModel, SIGLIP_TARGETS)
    peft_model = get_peft_model(
        model_class.from_pretrained(tiny[family]),
        LoraConfig(r=4, lora_alpha=4, lora_dropout=0.0, target_modules=targets, bias="lora_only"),
    )
    inner = peft_model.base_model.model
    tower = load_tower(tiny[family], vision_only=True)
    apply_lora(tower, upstream_lora(family))
    theirs = dict(inner.named_parameters())
    with torch.no_grad():
        for name, param in tower.model.named_parameters():
            peft_name = (
                name if family == "clip" else "vision_model." + name
            )  # SiglipVisionModel has no vision_model level
            head, _, leaf = peft_name.rpartition(".")
            param.copy_(
                theirs[peft_name if peft_name in theirs else f"{head}.base_layer.{leaf}"]
            )  # a layer only PEFT wrapped
    before = {n: p.detach().clone() for n, p in theirs.items()}
    pixels = tower.normalize(torch.rand(2, 3, 32, 32))
    for params, loss in (
        (
            [p for p in inner.parameters() if p.requires_grad],
            lambda: _pooled(inner.get_image_features(pixel_values=pixels)),
        ),
        ([p for p in tower.parameters() if p.requires_grad], lambda: tower.global_embedding(pixels)),
    ):
        optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
        loss().square().sum().backward()
        optimizer.step()
    with torch.no_grad():
        torch.testing.assert_close(
            tower.global_embedding(pixels), _pooled(inner.get_image_features(pixel_values=pixels))
        )
    text_side = [n for n in theirs if n.startswith(("text_model", "text_projection")) and theirs[n].requires_grad]
    assert text_side and all(torch.equal(theirs[n], before[n]) for n in text_side)


def _pooled(features):
    return getattr(features, "pooler_output", features)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_export_carries_projection_and_head_after_a_lora_step(tiny, family, tmp_path):
    """A LoRA step with upstream's scope changes CLIP's visual_projection / SigLIP's head, and the export has it."""
    cfg = load_config(
        EnhanceConfig,
        REPO
        / "stages"
        / "configs"
        / "upstream"
        / f"enhance_{'clip_l14_224' if family == 'clip' else 'siglip_so400m_224'}.yaml",
        [f"tower={tiny[family]}", f"denoiser={tiny['sd']}", f"output_dir={tmp_path}"],
    )
    tower = load_tower(cfg.tower, vision_only=True)
    apply_lora(tower, dataclasses.replace(cfg.lora, dropout=0.0))
    pixels = tower.normalize(torch.rand(2, 3, 32, 32))
    optimizer = torch.optim.AdamW([p for p in tower.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    tower.global_embedding(pixels).square().sum().backward()
    optimizer.step()
    for stage in ("projector", "lora"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "train_state.json").write_text(json.dumps({"step": 1, "finished": True}))
    save_file(
        {f"tower.{n}": p.detach().contiguous() for n, p in tower.named_parameters() if p.requires_grad},
        tmp_path / "lora" / "trainable.safetensors",
    )
    merge_lora(tower)

    exported, base = (
        model_class.from_pretrained(p)
        for model_class in [CLIPModel if family == "clip" else SiglipModel]
        for p in (export_tower(cfg, tmp_path / "tower"), tiny[family])
    )
    changed = (
        ["visual_projection.weight"]
        if family == "clip"
        else ["vision_model.head.mlp.fc1.weight", "vision_model.head.attention.out_proj.bias"]
    )
    unchanged = (
        ["text_projection.weight"]
        if family == "clip"
        else ["vision_model.head.attention.out_proj.weight", "text_model.head.weight"]
    )
    exported_state, base_state = exported.state_dict(), base.state_dict()
    assert all(not torch.equal(exported_state[k], base_state[k]) for k in changed)
    assert all(torch.equal(exported_state[k], base_state[k]) for k in unchanged)
    with torch.no_grad():
        torch.testing.assert_close(
            _pooled(exported.get_image_features(pixel_values=pixels)),
            tower.global_embedding(pixels),
            atol=1e-5,
            rtol=1e-5,
        )


def test_empty_prompt_with_mask_is_the_text_encoder_run_with_the_mask(tiny):
    """boyuh/DCR clip_models/CLIP_bank.py:45-51: tokenizer([""], padding="max_length") then the encoder with the mask."""
    sd = Path(tiny["sd"])
    tokenizer = CLIPTokenizer.from_pretrained(sd / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(sd / "text_encoder")
    tokens = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    with torch.no_grad():
        masked = text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
    ours = FrozenDenoiser.from_pretrained(sd, empty_prompt_mask=True).empty_context
    torch.testing.assert_close(ours, masked)
    assert not torch.allclose(FrozenDenoiser.from_pretrained(sd).empty_context, masked)  # the option matters


def test_openai_clip_normalisation_reaches_the_siglip_tower(tiny, tmp_path):
    """boyuh/DCR train_SigLIP_stage1.py:58,245 normalises SigLIP's input with OpenAI CLIP's mean/std."""
    cfg = load_config(
        EnhanceConfig,
        None,
        [
            f"tower={tiny['siglip']}",
            f"denoiser={tiny['sd']}",
            f"output_dir={tmp_path}",
            "data.normalization=openai_clip",
        ],
    )
    model = build_model(cfg, validate(cfg), "projector")
    gray = torch.full((1, 3, 32, 32), 0.5)
    expected = (0.5 - torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(model.tower.normalize(gray), expected.expand(1, 3, 32, 32))
    assert torch.allclose(load_tower(tiny["siglip"]).normalize(gray), torch.zeros(1))  # the tower's own: 0.5 -> 0
