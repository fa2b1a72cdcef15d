"""The source side of ``convert-tower``: a state dict read from its file, its layout recognised, and
the source model (open_clip's, or timm's SigLIP at the read shapes) built on the meta device and
filled with it, checked tensor by tensor; ``convert`` maps it to HF and compares the two forwards."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from dcr_mllm.errors import DcrError
from dcr_mllm.towers.convert_text import text_cfg, text_state
from dcr_mllm.weights import PICKLE_SUFFIXES, refuse_pickles

HEAD_WIDTH = 64  # open_clip's CLIPVisionCfg.head_width default


def read_state_dict(path: str | Path, allow_pickle: bool = False) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file or (with ``allow_pickle``, restricted unpickler) a
    ``.pth``/``.pt``/``.bin``, unwrapped from a ``state_dict`` entry and a DDP ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise DcrError(f"{path}: no such file; give a .safetensors, .pth, .pt or .bin state dict")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        from dcr_mllm.weights import check_safetensors

        check_safetensors(path)
        state = load_file(path)
    elif path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            refuse_pickles([path])
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise DcrError(f"{path} cannot be read as a state dict ({str(err).splitlines()[0][:200]})") from err
    else:
        raise DcrError(f"{path}: unknown weight file type; give a .safetensors, .pth, .pt or .bin state dict")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise DcrError(f"{path} holds no state dict (a dict of tensors, or one under 'state_dict')")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if "conv1.weight" in state or any(k.startswith("trunk.") for k in state):  # saved from model.visual
        state = {"visual." + k: v for k, v in state.items()}
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def layout_of(state: dict[str, Tensor]) -> str:
    """``"vit"`` (OpenAI clip / open_clip VisionTransformer) or ``"timm"`` (open_clip's timm trunk)."""
    if any(k.startswith("visual.trunk.") for k in state):
        return "timm"
    if "visual.conv1.weight" in state:
        return "vit"
    raise DcrError(
        f"no vision tower in OpenAI clip's or open_clip's layout (first key {next(iter(state))!r}); "
        "expected visual.conv1.weight (ViT) or visual.trunk.* (timm SigLIP)"
    )


def model_config(state: dict[str, Tensor], layout: str, model: str | None, gelu: bool) -> dict:
    """open_clip's ``model_cfg`` of the source: read from ``model`` (a registered name or a JSON file,
    ``open_clip_config.json`` too) or inferred from the shapes."""
    if model:
        import open_clip

        path = Path(model)
        if path.suffix == ".json":
            if not path.is_file():
                raise DcrError(f"--model {model}: no such file; give an open_clip model config JSON or a model name")
            cfg = json.loads(path.read_text())
            return cfg.get("model_cfg", cfg)
        cfg = open_clip.get_model_config(model)
        if cfg is None:
            raise DcrError(f"--model {model}: not an open_clip model name (open_clip.list_models()) nor a .json file")
        return cfg
    if layout == "timm":
        weight = state["visual.trunk.patch_embed.proj.weight"]
        width, patch = weight.shape[0], weight.shape[-1]
        mlp = state["visual.trunk.blocks.0.mlp.fc1.weight"].shape[0]
        grid = round(state["visual.trunk.pos_embed"].shape[-2] ** 0.5)
        layers = len({k.split(".")[3] for k in state if k.startswith("visual.trunk.blocks.")})
        return {"embed_dim": width, "timm": dict(width=width, patch=patch, mlp=mlp, image=grid * patch, layers=layers)}
    weight = state["visual.conv1.weight"]
    width, patch = weight.shape[0], weight.shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vision = {
        "width": width,
        "layers": len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")}),
        "patch_size": patch,
        "image_size": grid * patch,
        "mlp_ratio": state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        "head_width": HEAD_WIDTH,
    }
    return {"embed_dim": state["visual.proj"].shape[1], "quick_gelu": not gelu, "vision_cfg": vision}


def build_source(cfg: dict) -> nn.Module:
    """open_clip's vision tower for ``cfg`` (float32); an inferred SigLIP is timm's at the read shapes."""
    if "timm" in cfg:
        import timm

        shape = cfg["timm"]
        heads = max(1, shape["width"] // HEAD_WIDTH)
        visual = nn.Module()
        visual.trunk = timm.create_model(
            "vit_base_patch16_siglip_224",
            pretrained=False,
            num_classes=0,
            global_pool="map",
            img_size=shape["image"],
            patch_size=shape["patch"],
            embed_dim=shape["width"],
            depth=shape["layers"],
            num_heads=heads,
            mlp_ratio=shape["mlp"] / shape["width"],
        )
        visual.head = nn.Sequential()
        return visual
    from open_clip.model import _build_vision_tower

    try:
        return _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg.get("quick_gelu", False))
    except (KeyError, TypeError, AssertionError, RuntimeError) as err:
        raise DcrError(f"the open_clip model config cannot be built ({err}); check --model") from err


def fitted_source(
    state: dict[str, Tensor], layout: str, model: str | None, gelu: bool, src: Path, whole: bool = False
) -> nn.Module:
    """The source architecture holding ``state``'s vision tensors (``whole``: open_clip's whole CLIP,
    its text side too). It is built on the meta device and checked tensor by tensor first, so a file
    that does not fit is refused, naming the first difference, before any memory is spent on it.

    Args:
        state: the source's tensors, named as in its file.
        layout: ``layout_of(state)``.
        model: open_clip's model name or config JSON; None reads the architecture from the shapes.
        gelu: an inferred ViT uses ``nn.GELU`` rather than QuickGELU.
        src: the file, named by the error.
        whole: build and fill the whole CLIP (a ViT layout with its text side).
    """
    cfg = model_config(state, layout, model, gelu)
    with torch.device("meta"):
        if whole:
            from open_clip.model import CLIP

            text = cfg.get("text_cfg") or text_cfg(text_state(state))
            source = CLIP(cfg["embed_dim"], cfg["vision_cfg"], text, quick_gelu=cfg.get("quick_gelu", False))
        else:
            source = build_source(cfg)
    if whole:
        own, shown = {k: v for k, v in state.items() if k != "attn_mask"}, ""
    else:
        prefix = "visual.trunk." if layout == "timm" else "visual."
        own, shown = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith(prefix)}, "visual."
    expected = source.state_dict()
    named = f"open_clip's {model}" if model else "the architecture read from its shapes"
    hint = "" if model else "; name the source's model with --model"
    for key, tensor in expected.items():
        found = own.get(key)
        if found is None or found.shape != tensor.shape:
            there = "missing" if found is None else f"{tuple(found.shape)} there"
            raise DcrError(f"{src} does not fit {named}: {shown}{key} is {there}, {tuple(tensor.shape)} in it{hint}")
    extra = sorted(set(own) - set(expected))
    if extra:
        raise DcrError(f"{src} does not fit {named}: it has {shown}{extra[0]}, which the model has not{hint}")
    source.load_state_dict(own, assign=True)
    if whole:  # the one buffer a file does not hold: open_clip's causal mask (TextTransformer.build_causal_mask)
        length = source.positional_embedding.shape[0]
        source.attn_mask = torch.full((length, length), float("-inf")).triu_(1)
    unfilled = [name for name, buffer in source.named_buffers() if buffer.is_meta]
    if unfilled:
        raise DcrError(f"{src}: the source model needs {unfilled[0]}, which no file holds; it cannot be converted")
    return source.eval()


__all__ = ["build_source", "fitted_source", "layout_of", "model_config", "read_state_dict"]
