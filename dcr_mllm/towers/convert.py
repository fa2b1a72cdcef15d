"""``convert-tower``: a tower saved in OpenAI ``clip``'s or open_clip's state-dict layout, to its
family's HF format, verified against the source model's own forward.

Layouts (recognised from the keys, architecture read from the shapes or named by ``--model``):

- ViT (OpenAI ``clip``'s ``model.state_dict()``, and open_clip's ``VisionTransformer``, which keeps
  OpenAI's names): ``visual.conv1``, ``visual.class_embedding``, ``visual.transformer.resblocks.N.*``,
  ``visual.ln_post``, ``visual.proj`` -> ``CLIPVisionModelWithProjection``. The mapping follows
  transformers' ``src/transformers/models/clip/convert_clip_original_pytorch_to_hf.py`` (huggingface/
  transformers @ 0ea01089f778cba53d0a06e62972b8be1ed554e7, lines 23-103: ``in_proj`` split into q, k, v;
  ``c_fc``/``c_proj`` to ``fc1``/``fc2``; ``visual_projection = proj.T``).
- timm SigLIP inside open_clip (``visual.trunk.*``, ``timm_pool: map``, ``timm_proj: none``):
  ``patch_embed.proj``, ``pos_embed``, ``blocks.N.attn.qkv``, ``norm``, ``attn_pool.*`` ->
  ``SiglipVisionModel`` with its attention-pooling head. Block names as in transformers'
  ``src/transformers/models/siglip/convert_siglip_to_hf.py`` (@ 091ffff471745f26df9ff1cd493b4d621a578325,
  lines 61-89); the MAP head as timm's ``AttentionPoolLatent`` computes it (``q`` and ``kv`` stacked are
  ``nn.MultiheadAttention``'s ``in_proj``, ``latent`` is the probe). timm's SigLIP uses exact GELU
  (big_vision's is tanh-approximate), so the HF config says ``gelu``: what the source computes.

With ``tokenizer`` (the base's tokenizer folder) a whole ViT CLIP keeps its text side too
(``convert_text``): the result is a ``CLIPModel`` whose text embedding is checked as well.

The source is built by ``convert_source`` with open_clip (``open_clip.model._build_vision_tower``, or for an inferred
SigLIP the timm ``vit_base_patch16_siglip_224`` definition at the read shapes) and run beside the
converted model on a fixed random batch; the image embedding and the layer -2 hidden states (what
LLaVA reads) must agree within ``TOLERANCE`` relative, or nothing is written. Heads are not in the
shapes: without ``--model`` they are ``width // 64`` (open_clip's default ``head_width``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from dcr_mllm.errors import DcrError
from dcr_mllm.io import atomic_dir
from dcr_mllm.towers.convert_source import fitted_source, layout_of, read_state_dict
from dcr_mllm.towers.convert_text import check_tokenizer, copy_tokenizer, map_text_keys, text_config, text_state
from dcr_mllm.towers.hf import quiet_transformers
from dcr_mllm.towers.registry import family_of_vision_type

#: the largest relative difference (max |converted - source| / max |source|) accepted
TOLERANCE = 1e-5

_L = "encoder.layers.{0}."
_VIT_RULES = [  # source key after "visual." -> HF keys (after "vision_model.", but for the projection)
    (r"conv1\.weight", ["embeddings.patch_embedding.weight"]),
    (r"class_embedding", ["embeddings.class_embedding"]),
    (r"positional_embedding", ["embeddings.position_embedding.weight"]),
    (r"ln_pre\.(weight|bias)", ["pre_layrnorm.{0}"]),
    (r"ln_post\.(weight|bias)", ["post_layernorm.{0}"]),
    (r"proj", ["#visual_projection.weight"]),
    (r"transformer\.resblocks\.(\d+)\.ln_([12])\.(weight|bias)", [_L + "layer_norm{1}.{2}"]),
    (r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", [_L + f"self_attn.{p}_proj.{{1}}" for p in "qkv"]),
    (r"transformer\.resblocks\.(\d+)\.attn\.out_proj\.(weight|bias)", [_L + "self_attn.out_proj.{1}"]),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias)", [_L + "mlp.fc1.{1}"]),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias)", [_L + "mlp.fc2.{1}"]),
]
_TIMM_RULES = [  # source key after "visual.trunk." -> HF keys after "vision_model."
    (r"patch_embed\.proj\.(weight|bias)", ["embeddings.patch_embedding.{0}"]),
    (r"pos_embed", ["embeddings.position_embedding.weight"]),
    (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", [_L + "layer_norm{1}.{2}"]),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", [_L + f"self_attn.{p}_proj.{{1}}" for p in "qkv"]),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", [_L + "self_attn.out_proj.{1}"]),
    (r"blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", [_L + "mlp.{1}.{2}"]),
    (r"norm\.(weight|bias)", ["post_layernorm.{0}"]),
    (r"attn_pool\.latent", ["head.probe"]),
    (r"attn_pool\.qkv\.(weight|bias)", ["head.attention.in_proj_{0}"]),  # q and kv, stacked below
    (r"attn_pool\.proj\.(weight|bias)", ["head.attention.out_proj.{0}"]),
    (r"attn_pool\.norm\.(weight|bias)", ["head.layernorm.{0}"]),
    (r"attn_pool\.mlp\.(fc[12])\.(weight|bias)", ["head.mlp.{0}.{1}"]),
]
#: the text side and bookkeeping of a whole CLIP: known, kept out of the vision tower
_TEXT = re.compile(
    r"(token_embedding\.weight|positional_embedding|text_projection(\.weight|\.bias)?|logit_scale|logit_bias"
    r"|ln_final\.(weight|bias)|attn_mask|input_resolution|context_length|vocab_size|transformer\..+|text\..+)"
)


def map_keys(state: dict[str, Tensor], layout: str) -> dict[str, Tensor]:
    """The vision tensors under HF names (``vision_model.`` prefix left out); the first key no rule
    maps, text side aside, is refused."""
    prefix, rules = ("visual.trunk.", _TIMM_RULES) if layout == "timm" else ("visual.", _VIT_RULES)
    state = dict(state)
    for part in ("weight", "bias"):  # timm's pooling query and key/value: nn.MultiheadAttention's in_proj
        q, kv = f"{prefix}attn_pool.q.{part}", f"{prefix}attn_pool.kv.{part}"
        if q in state and kv in state:
            state[f"{prefix}attn_pool.qkv.{part}"] = torch.cat([state.pop(q), state.pop(kv)])
    mapped = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            if _TEXT.fullmatch(key):
                continue
            raise DcrError(f"unknown key {key!r}: not in OpenAI clip's or open_clip's {layout} layout")
        name = key.removeprefix(prefix)
        found = [(m, targets) for pattern, targets in rules if (m := re.fullmatch(pattern, name))]
        if not found:
            raise DcrError(
                f"unknown key {key!r}: no HF counterpart in the {layout} layout; this tower cannot be mapped"
            )
        match, targets = found[0]
        parts = value.chunk(len(targets)) if len(targets) > 1 else [value]
        for target, part in zip(targets, parts):
            target = target.format(*match.groups())
            if target == "#visual_projection.weight":
                mapped[target] = part.T.contiguous()
            elif target == "embeddings.position_embedding.weight":
                mapped[target] = part.reshape(-1, part.shape[-1])
            else:
                mapped[target] = part.contiguous()
    return mapped


def hf_tower(source: nn.Module) -> tuple[nn.Module, object]:
    """The empty HF model and image processor that match ``source``'s architecture."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, SiglipVisionConfig, SiglipVisionModel

    if hasattr(source, "trunk"):
        trunk = source.trunk
        if getattr(trunk, "attn_pool", None) is None or trunk.cls_token is not None or list(source.head.children()):
            raise DcrError(
                "only open_clip's timm SigLIP towers (MAP pooling, no class token, timm_proj none) map to HF"
            )
        block, size = trunk.blocks[0], trunk.patch_embed.img_size[0]
        act = "gelu" if getattr(block.mlp.act, "approximate", "none") == "none" else "gelu_pytorch_tanh"
        config = SiglipVisionConfig(
            hidden_size=trunk.embed_dim,
            intermediate_size=block.mlp.fc1.out_features,
            num_hidden_layers=len(trunk.blocks),
            num_attention_heads=block.attn.num_heads,
            image_size=size,
            patch_size=trunk.patch_embed.patch_size[0],
            hidden_act=act,
            layer_norm_eps=trunk.norm.eps,
        )
        return SiglipVisionModel(config), family_of_vision_type(config.model_type).image_processor(size)
    from open_clip.transformer import QuickGELU

    if getattr(source, "attn_pool", None) is not None or getattr(source, "pool_type", "tok") != "tok":
        raise DcrError("only open_clip ViTs pooled on the class token (pool_type 'tok', no attn_pool) map to HF CLIP")
    if getattr(source, "final_ln_after_pool", False) or source.proj is None:
        raise DcrError("only open_clip ViTs with a projection and ln_post before pooling map to HF CLIP")
    block, size = source.transformer.resblocks[0], source.image_size[0]
    config = CLIPVisionConfig(
        hidden_size=source.conv1.out_channels,
        intermediate_size=block.mlp.c_fc.out_features,
        num_hidden_layers=len(source.transformer.resblocks),
        num_attention_heads=block.attn.num_heads,
        image_size=size,
        patch_size=source.conv1.kernel_size[0],
        projection_dim=source.proj.shape[1],
        hidden_act="quick_gelu" if isinstance(block.mlp.gelu, QuickGELU) else "gelu",
        layer_norm_eps=source.ln_pre.eps,
    )
    return CLIPVisionModelWithProjection(config), family_of_vision_type(config.model_type).image_processor(size)


def describe(config) -> str:
    """A vision config in one phrase, for reports."""
    return (
        f"width {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} heads, "
        f"{config.image_size} px, patch {config.patch_size}, {config.hidden_act}"
    )


def relative(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b|; infinite where the shapes differ."""
    if a.shape != b.shape:
        return float("inf")
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@torch.no_grad()
def compare(source: nn.Module, hf: nn.Module, image_size: int) -> dict[str, float]:
    """Max relative differences of the image embedding and the layer -2 hidden states on a fixed batch."""
    pixels = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    blocks = source.trunk.blocks if hasattr(source, "trunk") else source.transformer.resblocks
    captured = []
    hook = blocks[-2].register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        embedding = source.head(source.trunk(pixels)) if hasattr(source, "trunk") else source(pixels)
    finally:
        hook.remove()
    if hasattr(hf, "text_model"):  # a whole CLIPModel: its vision model and projection
        out = hf.vision_model(pixel_values=pixels, output_hidden_states=True)
        hf_embedding = hf.visual_projection(out.pooler_output)
    else:
        out = hf(pixel_values=pixels, output_hidden_states=True)
        hf_embedding = out.image_embeds if hasattr(out, "image_embeds") else out.pooler_output

    return {"embedding": relative(hf_embedding, embedding), "layer -2": relative(out.hidden_states[-2], captured[0])}


LAYOUTS = {
    "vit": "OpenAI clip / open_clip ViT layout",
    "timm": "open_clip timm SigLIP layout",
    "hf": "transformers save_pretrained folder",
}


@torch.no_grad()
def compare_text(source: nn.Module, hf: nn.Module) -> dict[str, float]:
    """Max relative difference of the text embedding on fixed random ids, each ending in end-of-text."""
    vocab, length = source.token_embedding.num_embeddings, source.positional_embedding.shape[0]
    ids = torch.randint(0, vocab - 1, (2, length), generator=torch.Generator().manual_seed(0))
    ids[0, length // 2], ids[1, -1] = vocab - 1, vocab - 1
    return {"text embedding": relative(hf.get_text_features(input_ids=ids).pooler_output, source.encode_text(ids))}


def require_close(differences: dict[str, float]) -> dict[str, float]:
    """``differences`` when every one is within ``TOLERANCE``; otherwise refuse (nothing is written)."""
    if not max(differences.values()) <= TOLERANCE:
        figures = ", ".join(f"{name} {value:.1e}" for name, value in differences.items())
        raise DcrError(
            f"the converted tower differs from the source ({figures} relative, limit {TOLERANCE:.0e}); nothing written"
        )
    return differences


@dataclass(frozen=True)
class ConvertReport:
    source: Path
    layout: str
    tower: str
    architecture: str
    text_tensors: int
    differences: dict[str, float]
    output: Path
    notes: tuple[str, ...] = ()  # what else was checked or is worth knowing, a line each

    def lines(self) -> list[str]:
        found = LAYOUTS[self.layout]
        figures = ", ".join(f"{name} {value:.1e}" for name, value in self.differences.items())
        kept = "text side kept" if self.text_tensors < 0 else f"{self.text_tensors} text-side tensors left out"
        return [
            f"source: {self.source} ({found})" + (f"; {kept}" if self.text_tensors else ""),
            f"tower: {self.tower}, {self.architecture}",
            f"verified against the source on a fixed random batch, max relative difference: {figures} "
            f"(limit {TOLERANCE:.0e})",
            *self.notes,
            f"written: {self.output}",
        ]


def convert_tower(
    src: str | Path,
    output: str | Path,
    *,
    model: str | None = None,
    gelu: bool = False,
    tokenizer: str | Path | None = None,
    allow_pickle: bool = False,
    force: bool = False,
) -> ConvertReport:
    """Convert an OpenAI clip / open_clip state dict's vision tower to HF, verified, written atomically.

    Args:
        src: the state-dict file (``.safetensors``; ``.pth``/``.pt``/``.bin`` with ``allow_pickle``).
        output: the HF tower directory to write (refused if it exists, unless ``force``).
        model: open_clip's model name or config JSON for the source; None infers it from the shapes.
        gelu: an inferred ViT uses ``nn.GELU`` (LAION-trained open_clip) rather than OpenAI's QuickGELU.
        tokenizer: a folder with the base's CLIP tokenizer: keep the text side too (a whole ``CLIPModel``).
        allow_pickle: load a pickled file with ``torch.load(weights_only=True)``.
        force: replace an existing ``output`` once the new one is written and verified.
    """
    src, output = Path(src), Path(output)
    if output.exists() and not force:
        raise DcrError(f"{output} exists; choose another --output or pass --force to replace it")
    state = {k: v.float() for k, v in read_state_dict(src, allow_pickle).items()}
    layout = layout_of(state)
    mapped = map_keys(state, layout)
    whole, text_weights = tokenizer is not None, {}
    if whole:  # checked before any model is built
        if layout != "vit":
            raise DcrError("--tokenizer: only a ViT CLIP's text side maps (open_clip's SigLIP text does not); drop it")
        if not text_state(state):
            raise DcrError(f"--tokenizer: {src} holds no text side (a vision tower alone); drop --tokenizer")
        text_weights = map_text_keys(text_state(state))
        check_tokenizer(tokenizer, state["token_embedding.weight"].shape[0])
    source = fitted_source(state, layout, model, gelu, src, whole)
    visual = source.visual if whole else source
    if len(list(visual.trunk.blocks if layout == "timm" else visual.transformer.resblocks)) < 2:
        raise DcrError(f"{src}: a tower of one block has no layer -2 for LLaVA to read")
    hf, processor = hf_tower(visual)
    if whole:
        from transformers import CLIPConfig, CLIPModel

        heads = source.transformer.resblocks[0].attn.num_heads
        config = CLIPConfig(
            text_config=text_config(source, heads).to_dict(),
            vision_config=hf.config.to_dict(),
            projection_dim=hf.config.projection_dim,
        )
        hf = CLIPModel(config)
    keys = set(hf.state_dict())
    inner = "vision_model." if any(k.startswith("vision_model.") for k in keys) else ""
    weights = {k.removeprefix("#") if k.startswith("#") else inner + k: v for k, v in mapped.items()} | text_weights
    try:
        hf.load_state_dict(weights)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise DcrError(f"{src}: the mapped tensors do not fit {type(hf).__name__} ({detail})") from err
    with atomic_dir(output) as tmp:
        with quiet_transformers():
            hf.save_pretrained(tmp, safe_serialization=True)
            processor.save_pretrained(tmp)
            if whole:
                copy_tokenizer(tokenizer, tmp)
            saved = type(hf).from_pretrained(tmp).eval()  # what the directory holds is what is checked
        differences = compare(visual, saved, visual_config(hf).image_size)
        if whole:
            differences |= compare_text(source, saved)
        require_close(differences)
    text = -1 if whole else sum(1 for k in state if not k.startswith("visual."))
    return ConvertReport(src, layout, type(hf).__name__, describe(visual_config(hf)), text, differences, output)


def visual_config(hf: nn.Module):
    """The vision config of a vision model or of a whole CLIPModel."""
    return getattr(hf.config, "vision_config", hf.config)


__all__ = ["TOLERANCE", "ConvertReport", "convert_tower", "read_state_dict"]
