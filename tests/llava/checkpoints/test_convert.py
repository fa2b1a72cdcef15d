"""convert-llava: an original LLaVA checkpoint becomes the llava-hf checkpoint transformers' conversion makes."""

import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from dcr_mllm.cli import main
from dcr_mllm.llava.build import VICUNA_CHAT_TEMPLATE
from dcr_mllm.llava.checkpoints.convert import convert_llava
from dcr_mllm.llava.checkpoints.swap import swap_tower


def stored(directory) -> dict[str, torch.Tensor]:
    found = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            found |= {k: f.get_tensor(k) for k in f.keys()}
    return found


def llava_hf_name(original_key: str) -> str:
    """Where transformers' conversion puts an original tensor (the llava-hf hub layout), spelled out."""
    projector = {
        "model.mm_projector.0.": "multi_modal_projector.linear_1.",
        "model.mm_projector.2.": "multi_modal_projector.linear_2.",
    }
    for old, new in projector.items():
        if original_key.startswith(old):
            return new + original_key.removeprefix(old)
    if original_key.startswith("model.vision_tower.vision_tower."):
        return "vision_tower." + original_key.removeprefix("model.vision_tower.vision_tower.")
    return "language_model." + original_key


def transformers_reference(
    tiny, original: dict[str, torch.Tensor], vocab: int, tmp_path
) -> LlavaForConditionalGeneration:
    """transformers' own recipe: LlavaConfig from the text and vision configs, the renamed weights
    (with the tower's), then ``resize_token_embeddings(vocab + 2, 64)``."""
    from transformers import CLIPVisionModel

    config = LlavaConfig(
        text_config=LlamaConfig.from_pretrained(tiny["llama"]),
        vision_config=CLIPVisionConfig.from_pretrained(tiny["clip"]),
        image_token_index=vocab,
        image_seq_length=16,
    )
    config.pad_token_id = vocab + 1
    tower = CLIPVisionModel.from_pretrained(tiny["clip"], dtype=torch.float16).state_dict()
    weights = {llava_hf_name(k): v for k, v in original.items()} | {
        f"vision_tower.vision_model.{k}": v for k, v in tower.items()
    }
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    config.save_pretrained(reference_dir)
    from safetensors.torch import save_file

    save_file(weights, reference_dir / "model.safetensors", metadata={"format": "pt"})
    model = LlavaForConditionalGeneration.from_pretrained(reference_dir, dtype=torch.float16)
    model.resize_token_embeddings(vocab + 2, 64)
    return model


def test_conversion_matches_transformers(make_original, tiny, tmp_path):
    src = make_original()
    original = stored(src)
    vocab = original["model.embed_tokens.weight"].shape[0]
    dst = tmp_path / "llava-hf"

    report = convert_llava(src, dst)

    on_disk = stored(dst)
    tower_keys = {k for k in on_disk if k.startswith("vision_tower.vision_model.")}
    assert set(on_disk) - tower_keys == {llava_hf_name(k) for k in original}
    assert len(tower_keys) == 55
    padded = -(-(vocab + 2) // 64) * 64
    config = json.loads((dst / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == padded
    assert (config["image_token_index"], config["pad_token_id"]) == (vocab, vocab + 1)
    assert (config["vision_feature_layer"], config["vision_feature_select_strategy"], config["image_seq_length"]) == (
        -2,
        "default",
        16,
    )
    tokenizer = AutoTokenizer.from_pretrained(dst)
    assert (
        tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [vocab, vocab + 1] and tokenizer.pad_token == "<pad>"
    )
    assert tokenizer("a <image> b").input_ids.count(vocab) == 1

    model, info = LlavaForConditionalGeneration.from_pretrained(dst, output_loading_info=True)
    assert not any(info.values()), info
    reference = transformers_reference(tiny, original, vocab, tmp_path).state_dict()
    ours = model.state_dict()
    assert ours.keys() == reference.keys()
    resized = ("model.language_model.embed_tokens.weight", "lm_head.weight")
    for key, value in reference.items():
        assert ours[key].shape == value.shape and ours[key].dtype == torch.float16, key
        if key in resized:
            assert torch.equal(ours[key][:vocab], value[:vocab]), key
        else:
            assert torch.equal(ours[key], value), key
    embeddings = original["model.embed_tokens.weight"].float()
    for key in resized:
        new_rows = ours[key][vocab:].float()
        assert torch.allclose(new_rows, embeddings.mean(0).expand_as(new_rows), atol=1e-3)
        assert new_rows.std(0).sum() > 0  # drawn, not copies of the mean
    assert not torch.equal(ours[resized[0]][vocab:], ours[resized[1]][vocab:])

    processor = AutoProcessor.from_pretrained(dst)
    assert processor.chat_template == VICUNA_CHAT_TEMPLATE
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}],
        add_generation_prompt=True,
    )
    assert prompt.endswith(" USER: <image>\nWhat is it? ASSISTANT:")
    inputs = processor(images=Image.new("RGB", (32, 32), (0, 90, 200)), text=prompt, return_tensors="pt")
    assert (inputs.input_ids == vocab).sum() == 16
    with torch.no_grad():
        generated = model.float().generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs.input_ids.shape[1] + 3
    assert "verified" in "\n".join(report.lines()) and f"<image> = {vocab}" in "\n".join(report.lines())


def test_a_stored_tower_is_converted_and_the_result_takes_a_swap(make_original, dcr_tower, tmp_path):
    src = make_original(stored_tower=True)
    dst = tmp_path / "llava-hf"
    convert_llava(src, dst)
    original, converted = stored(src), stored(dst)
    for key, value in original.items():
        if key.startswith("model.vision_tower.vision_tower."):
            assert torch.equal(converted[llava_hf_name(key)], value), key

    swapped = tmp_path / "swapped"
    report = swap_tower(dst, dcr_tower, swapped)
    assert "replace 55 vision-tower tensors" in "\n".join(report.lines())
    _, info = LlavaForConditionalGeneration.from_pretrained(swapped, output_loading_info=True)
    assert not any(info.values()), info


def test_pickled_checkpoint_converts_like_safetensors(make_original, tmp_path):
    convert_llava(make_original(), tmp_path / "from-safetensors")
    convert_llava(make_original(pickled=True), tmp_path / "from-bin", allow_pickle=True)
    a, b = stored(tmp_path / "from-safetensors"), stored(tmp_path / "from-bin")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_llava_hf_input_is_refused(make_llava_hf, tmp_path, capsys):
    capsys.readouterr()
    code = main(["convert-llava", "--input", str(make_llava_hf("hub")), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "already a llava-hf checkpoint" in err
    assert list(tmp_path.iterdir()) == []


# A transcription of transformers' LLaVA-1.6 conversion, huggingface/transformers
# src/transformers/models/llava_next/convert_llava_next_weights_to_hf.py at commit 063b32f6798e:
# lines 47-57, KEYS_TO_MODIFY_MAPPING, applied in order with str.replace (lines 73-83, which also skip *.inv_freq):
NEXT_KEYS_TO_MODIFY_MAPPING = {
    "model.vision_tower.": "",
    "model.mm_projector": "multi_modal_projector",
    "model": "model.model",
    "vision_model.model": "vision_model",
    "lm_head": "language_model.lm_head",
    "model.model": "language_model.model",
    "multi_modal_projector.0": "multi_modal_projector.linear_1",
    "multi_modal_projector.2": "multi_modal_projector.linear_2",
    "language_model.model.image_newline": "image_newline",
}


def next_name(key: str) -> str:
    for old, new in NEXT_KEYS_TO_MODIFY_MAPPING.items():
        if old in key:
            key = key.replace(old, new)
    return key


def test_llava_v16_converts_to_llava_next_as_transformers_does(make_original, tiny, dcr_tower, tmp_path):
    """LLaVA-1.6 -> LlavaNextForConditionalGeneration: the transcribed renames (image_newline kept, lines 47-57),
    LlavaNextConfig with the checkpoint's image_grid_pinpoints and pad token <pad> = vocab + 1 (lines 116-121),
    the tower's preprocessing as a LlavaNextImageProcessor (line 113), embeddings resized to vocab + 2 padded to
    64 (lines 140-141); the model transformers builds from that recipe equals ours."""
    from safetensors.torch import save_file
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    src = make_original(stored_tower=True, anyres=True)
    original = stored(src)
    vocab = original["model.embed_tokens.weight"].shape[0]
    pinpoints = json.loads((src / "config.json").read_text())["image_grid_pinpoints"]
    dst = tmp_path / "llava-next"

    report = convert_llava(src, dst)

    on_disk = stored(dst)
    assert set(on_disk) == {next_name(k) for k in original}
    assert torch.equal(on_disk["image_newline"], original["model.image_newline"])
    config = json.loads((dst / "config.json").read_text())
    assert config["architectures"] == ["LlavaNextForConditionalGeneration"] and config["model_type"] == "llava_next"
    assert config["image_grid_pinpoints"] == pinpoints and (config["image_token_index"], config["pad_token_id"]) == (
        vocab,
        vocab + 1,
    )
    assert (config["vision_feature_layer"], config["vision_feature_select_strategy"]) == (-2, "default")
    processor = AutoProcessor.from_pretrained(dst)
    assert (
        type(processor).__name__ == "LlavaNextProcessor" and processor.image_processor.image_grid_pinpoints == pinpoints
    )

    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference_config = LlavaNextConfig(
        text_config=LlamaConfig.from_pretrained(tiny["llama"]).to_dict(),
        vision_config=CLIPVisionConfig.from_pretrained(tiny["clip"]),
        image_grid_pinpoints=pinpoints,
        image_token_index=vocab,
    )
    reference_config.pad_token_id = vocab + 1
    reference_config.save_pretrained(reference_dir)
    save_file(
        {next_name(k): v for k, v in original.items()}, reference_dir / "model.safetensors", metadata={"format": "pt"}
    )
    reference = LlavaNextForConditionalGeneration.from_pretrained(reference_dir, dtype=torch.float16)
    reference.resize_token_embeddings(vocab + 2, 64)
    model, info = LlavaNextForConditionalGeneration.from_pretrained(dst, output_loading_info=True)
    assert not any(info.values()), info
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        rows = (
            slice(None, vocab) if key in ("model.language_model.embed_tokens.weight", "lm_head.weight") else slice(None)
        )
        assert ours[key].shape == value.shape and torch.equal(ours[key][rows], value[rows]), key

    inputs = processor(
        images=Image.new("RGB", (70, 30), (0, 90, 200)),
        text="USER: <image>\nWhat is it? ASSISTANT:",
        return_tensors="pt",
    )
    assert inputs.pixel_values.shape[1] > 1  # base image and tiles
    with torch.no_grad():
        generated = model.float().generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs.input_ids.shape[1] + 3
    text = "\n".join(report.lines())
    assert "original LLaVA-1.6" in text and "model.image_newline -> image_newline" in text
    assert "LlavaNextForConditionalGeneration.from_pretrained accepts" in text

    swapped = tmp_path / "swapped"  # and the result takes a swap
    assert "replace 55 vision-tower tensors" in "\n".join(swap_tower(dst, dcr_tower, swapped).lines())


@pytest.mark.parametrize(
    "change,expected",
    [
        (
            {"mm_patch_merge_type": "spatial"},
            "mm_patch_merge_type 'spatial' with image_aspect_ratio 'anyres': llava-hf holds flat",
        ),
        (
            {"image_grid_pinpoints": [[32, 40]]},
            "image_grid_pinpoints [32, 40] is not a whole number of the tower's 32 px tiles",
        ),
        ({"mm_vision_select_feature": "cls_patch"}, "mm_vision_select_feature 'cls_patch' leaves 17 features per tile"),
    ],
)
def test_a_v16_checkpoint_llava_next_cannot_hold_is_refused_in_one_line(
    change, expected, make_original, tmp_path, capsys
):
    src = shutil.copytree(make_original(anyres=True), tmp_path / "src")
    (src / "config.json").write_text(json.dumps(json.loads((src / "config.json").read_text()) | change))
    capsys.readouterr()
    code = main(["convert-llava", "--input", str(src), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out").exists()
