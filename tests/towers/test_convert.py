"""convert-tower: towers in OpenAI clip's and open_clip's layouts (ViT, timm SigLIP), built small from the
real classes, become HF towers whose embedding and layer -2 equal the source's; bad input is one line."""

import json
import re

import pytest
import timm
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file
from transformers import CLIPVisionModelWithProjection, SiglipVisionModel

from dcr_mllm.cli import main
from dcr_mllm.towers import convert

#: a tiny OpenAI-layout CLIP shaped as the tiny LLaVA's tower (width 32, 2 heads, 3 layers, MLP 64, 32 px)
TINY_TOWER_CFG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"layers": 3, "width": 32, "head_width": 16, "mlp_ratio": 2.0, "patch_size": 8, "image_size": 32},
}


def perturbed(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with norms, biases and embeddings moved off their init (ones, zeros)."""
    generator = torch.Generator().manual_seed(1)
    return {k: v + 0.1 * torch.randn(v.shape, generator=generator) for k, v in model.state_dict().items()}


def openai_clip(cfg: dict) -> CLIP:
    """A whole CLIP (vision and text) as OpenAI's ``clip`` package lays out its state dict."""
    torch.manual_seed(0)
    text = CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    return CLIP(cfg["embed_dim"], CLIPVisionCfg(**cfg["vision_cfg"]), text, quick_gelu=cfg["quick_gelu"])


def siglip_trunk() -> torch.nn.Module:
    """timm's SigLIP ViT (no class token, MAP head) as open_clip's TimmModel holds it, at width 64."""
    torch.manual_seed(0)
    return timm.create_model(
        "vit_base_patch16_siglip_224",
        pretrained=False,
        num_classes=0,
        global_pool="map",
        img_size=32,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=1,
        mlp_ratio=2.0,
    )


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["convert-tower", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def figures(out: str) -> dict[str, float]:
    line = next(line for line in out.splitlines() if line.startswith("verified"))
    return {name: float(value) for name, value in re.findall(r"(embedding|layer -2) ([0-9.e+-]+)", line)}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@torch.no_grad()
def test_an_openai_layout_pickle_converts_to_hf_clip_with_the_source_forward(tmp_path, capsys):
    model = openai_clip(TINY_TOWER_CFG)
    state = perturbed(model)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "tower.pt")
    (tmp_path / "cfg.json").write_text(json.dumps(TINY_TOWER_CFG))
    out_dir = tmp_path / "hf"

    code, _, err = run(capsys, tmp_path / "tower.pt", "--output", out_dir, "--model", tmp_path / "cfg.json")
    assert code == 2 and "--allow-pickle" in err and err.count("\n") == 1 and not out_dir.exists()

    code, out, err = run(
        capsys, tmp_path / "tower.pt", "--output", out_dir, "--model", tmp_path / "cfg.json", "--allow-pickle"
    )
    assert code == 0, err
    assert "text-side tensors left out" in out and "quick_gelu" in out
    assert set(figures(out)) == {"embedding", "layer -2"} and max(figures(out).values()) <= 1e-5
    model.load_state_dict(state)
    hf = CLIPVisionModelWithProjection.from_pretrained(out_dir).eval()
    pixels = torch.randn(3, 3, 32, 32)
    block_outputs = []
    model.visual.transformer.resblocks[-2].register_forward_hook(lambda m, i, o: block_outputs.append(o))
    expected = model.eval().encode_image(pixels)
    result = hf(pixel_values=pixels, output_hidden_states=True)
    assert relative(result.image_embeds, expected) < 1e-5
    assert relative(result.hidden_states[-2], block_outputs[0]) < 1e-5
    processor = json.loads((out_dir / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 32, "width": 32} and processor["image_mean"][0] == 0.48145466


@torch.no_grad()
def test_with_the_base_tokenizer_the_text_side_is_kept_and_reproduces_the_source(tmp_path, capsys):
    """A whole OpenAI-layout CLIP with the OpenAI vocabulary (the tiny preset's tokenizer, 49408 ids):
    the converted CLIPModel's text and image embeddings equal open_clip's, and it scores zero-shot."""
    from dcr_mllm.presets.real import resolve
    from dcr_mllm.towers import load_tower

    cfg = {
        **TINY_TOWER_CFG,
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    torch.manual_seed(0)
    model = CLIP(cfg["embed_dim"], CLIPVisionCfg(**cfg["vision_cfg"]), CLIPTextCfg(**cfg["text_cfg"]), quick_gelu=True)
    model.load_state_dict(perturbed(model))
    save_file(model.state_dict(), tmp_path / "whole.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    tokenizer, out_dir = resolve("tiny-clip"), tmp_path / "hf"
    args = [tmp_path / "whole.safetensors", "--output", out_dir, "--model", tmp_path / "cfg.json"]
    code, out, err = run(capsys, *args, "--tokenizer", tokenizer)
    assert code == 0, err
    assert "text side kept" in out and "CLIPModel" in out
    assert float(re.search(r"text embedding ([0-9.e+-]+)", out).group(1)) <= 1e-5
    tower = load_tower(out_dir).eval()
    ids = tower._tokenizer(["a photo of a red square"]).input_ids
    padded = torch.zeros(1, 77, dtype=torch.long)
    padded[0, : len(ids[0])] = torch.tensor(ids[0])  # open_clip's tokenizer pads with 0
    assert relative(tower.encode_text(["a photo of a red square"]), model.eval().encode_text(padded)) < 1e-5
    pixels = torch.randn(2, 3, 32, 32)
    assert relative(tower.global_embedding(pixels), model.encode_image(pixels)) < 1e-5

    args[2] = tmp_path / "refused"
    code, _, err = run(capsys, *args, "--tokenizer", tmp_path)  # no tokenizer files there
    assert code == 2 and "no tokenizer files there" in err and err.count("\n") == 1
    visual_only = {k: v for k, v in model.state_dict().items() if k.startswith("visual.")}
    save_file(visual_only, tmp_path / "visual.safetensors")
    code, _, err = run(capsys, tmp_path / "visual.safetensors", "--output", args[2], "--tokenizer", tokenizer)
    assert code == 2 and "holds no text side" in err and err.count("\n") == 1 and not args[2].exists()


@torch.no_grad()
@pytest.mark.parametrize("layout", ["open_clip ViT", "timm SigLIP"])
def test_open_clip_layouts_convert_with_the_architecture_read_from_the_shapes(layout, tmp_path, capsys):
    if layout == "open_clip ViT":  # LAION-style: nn.GELU, 2 heads of 64
        vision = {"layers": 2, "width": 128, "patch_size": 8, "image_size": 32}
        model = openai_clip({"embed_dim": 24, "quick_gelu": False, "vision_cfg": vision})
        state, extra, hf_class = perturbed(model), ["--gelu"], CLIPVisionModelWithProjection
    else:  # open_clip's CustomTextCLIP keeps its text under text.*, SigLIP's bias beside the scale
        trunk = siglip_trunk()
        state = {"visual.trunk." + k: v for k, v in perturbed(trunk).items()}
        state |= {
            "text.token_embedding.weight": torch.zeros(8, 4),
            "logit_scale": torch.ones(()),
            "logit_bias": torch.zeros(()),
        }
        extra, hf_class = [], SiglipVisionModel
    save_file(state, tmp_path / "tower.safetensors")

    code, out, err = run(capsys, tmp_path / "tower.safetensors", "--output", tmp_path / "hf", *extra)

    assert code == 0, err
    assert max(figures(out).values()) <= 1e-5
    hf = hf_class.from_pretrained(tmp_path / "hf").eval()
    pixels = torch.randn(2, 3, 32, 32)
    result = hf(pixel_values=pixels)
    if layout == "open_clip ViT":
        model.load_state_dict(state)
        assert hf.config.num_attention_heads == 2 and hf.config.hidden_act == "gelu"
        assert relative(result.image_embeds, model.eval().encode_image(pixels)) < 1e-5
    else:
        trunk.load_state_dict({k.removeprefix("visual.trunk."): v for k, v in state.items() if "trunk" in k})
        assert relative(result.pooler_output, trunk.eval()(pixels)) < 1e-5
        processor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
        assert processor["image_mean"] == [0.5] * 3 and processor["size"] == {"height": 32, "width": 32}


@pytest.mark.parametrize("case", ["unknown key", "forward differs", "no tower"])
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    state = openai_clip(TINY_TOWER_CFG).state_dict()
    if case == "unknown key":
        state["visual.transformer.resblocks.1.ls_1.gamma"] = torch.ones(32)
        expected = "unknown key 'visual.transformer.resblocks.1.ls_1.gamma'"
    elif case == "forward differs":  # a mapping that puts the keys where the queries belong
        rules = [
            (p, [t.replace("q_proj", "@").replace("k_proj", "q_proj").replace("@", "k_proj") for t in targets])
            for p, targets in convert._VIT_RULES
        ]
        monkeypatch.setattr(convert, "_VIT_RULES", rules)
        expected = "the converted tower differs from the source"
    else:
        state = {"encoder.weight": torch.ones(2)}
        expected = "no vision tower in OpenAI clip's or open_clip's layout (first key 'encoder.weight')"
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "tower.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps(TINY_TOWER_CFG))

    code, out, err = run(
        capsys, tmp_path / "tower.safetensors", "--output", tmp_path / "hf", "--model", tmp_path / "cfg.json"
    )

    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "tower.safetensors"]
