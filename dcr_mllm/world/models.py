"""The world's base models, trained here, deterministically, and saved by each library's own writer.

- ``clip``: a transformers ``CLIPModel`` trained contrastively on alt-text-like captions that name
  only the class (``scenes.clip_caption``; ``clip_detail_rate`` adds one detail to a share of
  them): its image embedding is trained to care about the class alone.
- ``sd``: a Stable-Diffusion-layout pipeline (``AutoencoderKL``, ``UNet2DConditionModel``, DDPM
  scheduler, CLIP text encoder and tokenizer) whose VAE is trained to reconstruct the world's
  images and whose UNet and text encoder are trained to denoise them from detailed captions
  (``scenes.detailed_caption``, 10 % dropped to the empty prompt, 30 % given in DCR's shift form),
  so it must encode the details; a third UNet level and high-noise timesteps make it place things
  from the condition.
- ``clip_reference``: the same CLIP build on detailed captions only, the premise's yardstick of
  what the same budget learns when the text names everything (``evaluation.analysis.premise``; built on demand).

Both ship inside the package as trained for the default ``WorldSpec`` (``world.shipped``: recipe and
digests in its manifest) and are installed on first use under ``$DCR_MLLM_CACHE/world``
(``ensure_world``), like the tiny preset; any other spec, or ``dcr-mllm build-world --rebuild``,
trains them here. They load through the code paths real checkpoints use. Each trains in one thread
with fixed seeds, so the same ``WorldSpec`` gives the same weights on one machine.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

from dcr_mllm.components.build_once import build_once, is_built
from dcr_mllm.errors import DcrError
from dcr_mllm.progress import ProgressLines
from dcr_mllm.world.scenes import (
    IMAGE_SIZE,
    WORLD_VALUES,
    clip_caption,
    detailed_caption,
    render,
    sample_scenes,
)

VERSION = "1"


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """Sizes and budgets of the world build; the defaults are the real world (about 6.5 minutes, 2 cores).
    The defaults make the paper's premise hold (``dcr-mllm world premise``): the CLIP's captions name
    only the class, so colour, count, position and orientation are hidden from it, and the denoiser
    takes colour, count and position from DCR's condition forms."""

    image_size: int = IMAGE_SIZE
    train_seed: int = 10  # and 11; evaluation sets must use other seeds (scenes.TRAINING_SEEDS)
    clip_images: int = 6000
    clip_steps: int = 900  # class-only captions drive the attributes out as training goes on
    clip_batch: int = 128
    clip_detail_rate: float = 0.0  # share of captions that name one fine attribute (0: like alt-text, the class only)
    vae_steps: int = 200
    sd_images: int = 6000
    sd_steps: int = 600
    sd_batch: int = 64
    caption_dropout: float = 0.1
    #: v_prediction: at high noise the target is mostly the clean latent, so the prediction must
    #: come from the condition (with epsilon it is mostly the noise, whatever the condition says)
    prediction_type: str = "v_prediction"
    lr: float = 1e-3
    #: one UNet level each (8x8, 4x4, ...), cross-attention on all but the lowest; a third level (2x2,
    #: where zero padding makes every cell a corner) lets a uniform condition place things in a half
    unet_channels: tuple[int, ...] = (32, 64, 64)  # (32, 64): a wrong position in the caption costs 0.1 % of its gain
    #: share of UNet training timesteps drawn from the top ``HIGH_NOISE`` of the schedule, where the
    #: noisy latent no longer shows the layout and only the caption can say where things are
    high_noise_share: float = 0.3
    #: share of UNet training conditions given in DCR's shift form (the empty prompt's context plus
    #: the caption's mean offset from it on every token), so the denoiser also answers that form
    shift_share: float = 0.3
    #: every scene on this one background ("": each scene on one of the three at random). The controlled
    #: premise: background, what DCR's condition carries most in the default world and the feature layer
    #: already holds, then carries nothing, and what it carries most are attributes the tower misses
    one_background: str = ""

    def __post_init__(self):
        if self.one_background and self.one_background not in WORLD_VALUES["background"]:
            raise DcrError(
                f"one_background {self.one_background!r}: use one of {', '.join(WORLD_VALUES['background'])}"
            )

    def fingerprint(self, name: str) -> str:
        """What model ``name`` is built from: the CLIP from the shared and ``clip_*`` fields, the
        denoiser from every other field, so a change to one model's fields keeps the other's build.
        A variant field counts only when set (``recipe``), so the default world keeps its shipped fingerprints."""

        def reads(field: str) -> bool:
            return field in SHARED_FIELDS or field.startswith("clip_") == name.startswith("clip")

        own = {k: v for k, v in self.recipe().items() if reads(k)}
        return hashlib.sha256(json.dumps([VERSION, name, own], sort_keys=True).encode()).hexdigest()[:16]

    def recipe(self) -> dict:
        """Every field, less the variant fields left unset: what a build records and is fingerprinted by."""
        return {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if not (k in VARIANT_FIELDS and v == getattr(WorldSpec, k))
        }

    @property
    def variant(self) -> str:
        """The world's name among its variants: "" for the default world, e.g. "background-gray"."""
        return f"background-{self.one_background}" if self.one_background else ""


MINI = WorldSpec(clip_images=64, clip_steps=3, clip_batch=16, vae_steps=3, sd_images=64, sd_steps=3, sd_batch=16)

CLIP_WIDTH, CLIP_LAYERS, CLIP_PATCH, EMBED_DIM = 64, 4, 4, 32
TEXT_WIDTH = 64  # also the UNet's cross-attention width
HIGH_NOISE = range(700, 1000)
SHARED_FIELDS = ("image_size", "train_seed", "lr", "one_background")  # read by both builds
VARIANT_FIELDS = ("one_background",)  # in a fingerprint only when set


def default_world_root(spec: WorldSpec | None = None) -> Path:
    """``$DCR_MLLM_CACHE/world`` or ``~/.cache/dcr_mllm/world``; a variant world's models beside it
    (``world-background-gray``), so building one never replaces the default world's."""
    cache = os.environ.get("DCR_MLLM_CACHE") or Path.home() / ".cache" / "dcr_mllm"
    variant = spec.variant if spec is not None else ""
    return Path(cache).expanduser() / ("world-" + variant if variant else "world")


def _pixels(scenes, size: int):
    """[N, 3, size, size] float pixels in [0, 1]."""
    import numpy as np
    import torch

    array = np.stack([np.asarray(render(scene, size)) for scene in scenes])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def build_world_clip(out_dir: str | Path, spec: WorldSpec = WorldSpec(), captions: str = "web") -> Path:
    """Train the base CLIP on class-mostly captions (``captions="detailed"``: on captions naming
    every attribute, the premise's reference, same budget); write CLIPModel + processor + tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from dcr_mllm.components.tokenizers import (
        CLIP_CONTEXT_LENGTH,
        CLIP_VOCAB_SIZE,
        clip_tokenizer,
        clip_tokenizer_files,
    )
    from dcr_mllm.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    out_dir = Path(out_dir)
    torch.manual_seed(spec.train_seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": CLIP_VOCAB_SIZE,
            "max_position_embeddings": CLIP_CONTEXT_LENGTH,
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 2 * TEXT_WIDTH,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "projection_dim": EMBED_DIM,
        },
        vision_config={
            "image_size": spec.image_size,
            "patch_size": CLIP_PATCH,
            "hidden_size": CLIP_WIDTH,
            "intermediate_size": 2 * CLIP_WIDTH,
            "num_hidden_layers": CLIP_LAYERS,
            "num_attention_heads": 4,
            "projection_dim": EMBED_DIM,
        },
        projection_dim=EMBED_DIM,
    )
    model = CLIPModel(config)
    tokenizer = clip_tokenizer()
    scenes = sample_scenes(spec.clip_images, spec.train_seed, spec.one_background)
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    pixels = (_pixels(scenes, spec.image_size) - mean) / std
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _cosine(s, spec.clip_steps, min(50, spec.clip_steps))
    )
    rng, order = random.Random(spec.train_seed), []
    model.train()
    lines = ProgressLines("world-clip", spec.clip_steps)
    for step in range(1, spec.clip_steps + 1):
        if len(order) < spec.clip_batch:
            order += rng.sample(range(len(scenes)), len(scenes))
        batch, order = order[: spec.clip_batch], order[spec.clip_batch :]
        texts = [
            clip_caption(scenes[i], rng, spec.clip_detail_rate) if captions == "web" else detailed_caption(scenes[i])
            for i in batch
        ]
        tokens = tokenizer(texts, padding=True, return_tensors="pt")
        loss = model(**tokens, pixel_values=pixels[batch], return_loss=True).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        lines.update(step, loss=loss.item())
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    CLIPImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    ).save_pretrained(out_dir)
    clip_tokenizer_files(out_dir)
    (out_dir / "train_log.json").write_text(json.dumps({"final_loss": loss.item(), "spec": spec.recipe()}, indent=1))
    return out_dir


def build_world_sd(out_dir: str | Path, spec: WorldSpec = WorldSpec()) -> Path:
    """Train the VAE, then the UNet and text encoder on detailed captions; write a StableDiffusionPipeline."""
    import torch
    import torch.nn.functional as F

    from dcr_mllm.components.diffusion import clip_text_encoder, save_sd_pipeline, sd_scheduler, sd_unet, sd_vae
    from dcr_mllm.components.tokenizers import CLIP_CONTEXT_LENGTH, clip_tokenizer

    if spec.prediction_type not in ("epsilon", "v_prediction"):
        raise DcrError(f"world prediction_type {spec.prediction_type!r}: use epsilon or v_prediction")
    out_dir = Path(out_dir)
    torch.manual_seed(spec.train_seed + 1)
    scenes = sample_scenes(spec.sd_images, spec.train_seed + 1, spec.one_background)
    images = _pixels(scenes, spec.image_size) * 2 - 1
    vae = sd_vae(spec.image_size)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=spec.lr)
    generator = torch.Generator().manual_seed(spec.train_seed + 2)
    lines = ProgressLines("world-sd VAE", spec.vae_steps)
    for step in range(1, spec.vae_steps + 1):
        batch = images[torch.randint(0, len(images), (spec.sd_batch,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        latent = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(latent).sample
        loss = F.mse_loss(recon, batch) + 1e-6 * posterior.kl().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        lines.update(step, loss=loss.item())
    vae.eval()
    with torch.no_grad():
        posterior = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
        vae_mse = F.mse_loss(vae.decode(posterior[:256]).sample, images[:256]).item()
    scaling = 1.0 / posterior.std().item()  # as SD chose 0.18215: unit-variance latents
    vae.register_to_config(scaling_factor=scaling)
    latents = posterior * scaling

    tokenizer = clip_tokenizer()
    text_encoder = clip_text_encoder(TEXT_WIDTH, 2 * TEXT_WIDTH, heads=2)
    unet = sd_unet(spec.image_size, spec.unet_channels, cross_attention_dim=TEXT_WIDTH)
    scheduler = sd_scheduler(spec.prediction_type)
    alphas = scheduler.alphas_cumprod.float()
    captions = [detailed_caption(scene) for scene in scenes]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=spec.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine(s, spec.sd_steps, min(50, spec.sd_steps)))
    rng = random.Random(spec.train_seed + 3)
    empty_ids = tokenizer([""], padding="max_length", max_length=CLIP_CONTEXT_LENGTH, return_tensors="pt").input_ids
    unet.train()
    text_encoder.train()
    lines = ProgressLines("world-sd UNet", spec.sd_steps)
    for step in range(1, spec.sd_steps + 1):
        index = torch.randint(0, len(latents), (spec.sd_batch,), generator=generator)
        texts = ["" if rng.random() < spec.caption_dropout else captions[i] for i in index.tolist()]
        ids = tokenizer(
            texts, padding="max_length", max_length=CLIP_CONTEXT_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids
        x0 = latents[index]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, 1000, (len(x0),), generator=generator)
        if spec.high_noise_share:
            high = torch.rand(len(x0), generator=generator) < spec.high_noise_share
            t = torch.where(high, torch.randint(HIGH_NOISE.start, HIGH_NOISE.stop, (len(x0),), generator=generator), t)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0 if spec.prediction_type == "v_prediction" else noise
        context = text_encoder(ids)[0]
        if spec.shift_share:
            empty = text_encoder(empty_ids)[0]
            shifted = empty + (context - empty).mean(dim=1, keepdim=True)
            context = torch.where(
                (torch.rand(len(x0), generator=generator) < spec.shift_share).view(-1, 1, 1), shifted, context
            )
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=context).sample, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        lines.update(step, loss=loss.item())
    unet.eval()
    text_encoder.eval()
    save_sd_pipeline(out_dir, vae, text_encoder, unet, scheduler, tokenizer)
    (out_dir / "train_log.json").write_text(
        json.dumps({"vae_mse": vae_mse, "final_loss": loss.item(), "spec": spec.recipe()}, indent=1)
    )
    return out_dir


WORLD_BUILDERS = {
    "clip": build_world_clip,
    "sd": build_world_sd,
    "clip_reference": functools.partial(build_world_clip, captions="detailed"),
}
BASE_MODELS = ("clip", "sd")  # what build-world builds; the reference only when the premise is measured


def ensure_world(name: str, root: str | Path | None = None, spec: WorldSpec = WorldSpec(), train: bool = False) -> Path:
    """``root/name``: kept where a complete build of ``spec`` is there (``build_once``), else installed
    from the package's shipped weights when they were trained from ``spec``, else (or with
    ``train``) trained here.

    Args:
        name: the world model: clip, sd or clip_reference (a key of ``WORLD_BUILDERS``).
        root: the directory of world models; None: ``default_world_root(spec)``.
        spec: the settings the model is built from (its fingerprint).
        train: train it here even where shipped weights fit ``spec``.
    """
    from dcr_mllm.world import shipped

    if name not in WORLD_BUILDERS:
        raise DcrError(f"unknown world model {name!r}; use one of {', '.join(WORLD_BUILDERS)}")
    root = Path(root) if root is not None else default_world_root(spec)
    target, fingerprint = root / name, spec.fingerprint(name)
    if not train and shipped.is_shipped(name, fingerprint):
        return build_once(target, fingerprint, lambda tmp: shipped.install(name, tmp))
    if not is_built(target, fingerprint):  # a preset name (world-clip, world-sd) can lead here: say what happens
        print(
            f"world model {name} is not built yet under {root}: training it now (minutes; built once, then cached)",
            file=sys.stderr,
            flush=True,
        )
    return build_once(target, fingerprint, lambda tmp: _train_in_one_thread(name, tmp, spec))


def _train_in_one_thread(name: str, out_dir: Path, spec: WorldSpec) -> None:
    """One thread: the same weights on every machine, and two builds fit two cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            WORLD_BUILDERS[name](out_dir, spec)
    finally:
        torch.set_num_threads(threads)


def build_world(root: str | Path | None = None, spec: WorldSpec = WorldSpec(), train: bool = False) -> dict[str, Path]:
    """Every missing world model: installed from the shipped weights where they fit ``spec``, the
    others (all with ``train``) trained each in its own one-thread process, side by side.

    Args:
        root: the directory of world models; None: ``default_world_root(spec)``.
        spec: the settings the models are built from.
        train: train every missing model here, shipped weights or not.
    """
    from dcr_mllm.world import shipped

    root = Path(root) if root is not None else default_world_root(spec)
    missing = [name for name in BASE_MODELS if not is_built(root / name, spec.fingerprint(name))]
    to_train = [name for name in missing if train or not shipped.is_shipped(name, spec.fingerprint(name))]
    for name in missing:
        if name not in to_train:
            ensure_world(name, root, spec)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    code = (
        "import sys, json; from dcr_mllm.world.models import WorldSpec, ensure_world; "
        "ensure_world(sys.argv[1], sys.argv[2], WorldSpec(**json.loads(sys.argv[3])), train=True)"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", code, name, str(root), json.dumps(spec.recipe())], env=env)
        for name in to_train
    ]
    failed = [name for name, process in zip(to_train, processes) if process.wait() != 0]
    if failed:
        raise DcrError(f"building the world model(s) {', '.join(failed)} failed (see the output above); rerun to retry")
    return {name: root / name for name in BASE_MODELS}
