"""A tower converted from OpenAI clip's layout goes through swap-tower into a LLaVA-1.5 checkpoint,
and LLaVA loads it whole."""

import json

import torch
from transformers import CLIPVisionModel, LlavaForConditionalGeneration

from dcr_mllm.llava.checkpoints.swap import swap_tower
from dcr_mllm.towers.convert import convert_tower
from tests.llava.checkpoints.test_swap import answer
from tests.towers.test_convert import TINY_TOWER_CFG, openai_clip, perturbed


def test_a_converted_openai_tower_swaps_into_llava(make_llava_hf, tmp_path):
    torch.save(perturbed(openai_clip(TINY_TOWER_CFG)), tmp_path / "tower.pth")
    (tmp_path / "cfg.json").write_text(json.dumps(TINY_TOWER_CFG))
    report = convert_tower(tmp_path / "tower.pth", tmp_path / "hf", model=str(tmp_path / "cfg.json"), allow_pickle=True)
    assert max(report.differences.values()) <= 1e-5

    swap_tower(make_llava_hf("transformers5", sharded=False), tmp_path / "hf", tmp_path / "llava")

    model, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava", output_loading_info=True)
    assert not any(info.values()), info
    expected = CLIPVisionModel.from_pretrained(tmp_path / "hf", dtype=torch.float16).state_dict()
    loaded = model.model.vision_tower.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert torch.isfinite(answer(tmp_path / "llava")).all()
