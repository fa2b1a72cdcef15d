"""objective.condition: tokens — patch tokens, projected one by one, added to the empty prompt's
context one to one; N of them drawn per image from the step's generator; every objective trains."""

import pytest
import torch
import yaml

from dcr_mllm.cli import main
from dcr_mllm.diffusion import ConditionProjector, FrozenDenoiser
from dcr_mllm.objectives import EnhanceModel, objective_settings
from dcr_mllm.towers import apply_lora, load_tower
from dcr_mllm.towers.lora import LoraSettings


def build(tiny, **objective):
    torch.manual_seed(0)
    tower = load_tower(tiny["clip"], vision_only=True)
    denoiser = FrozenDenoiser.from_pretrained(tiny["sd"])
    projector = ConditionProjector(tower.spec.hidden_size, denoiser.cross_attention_dim)
    model = EnhanceModel(tower, projector, denoiser, objective_settings(condition="tokens", **objective))
    model.requires_grad_(False)
    apply_lora(tower, LoraSettings(r=4, alpha=4, dropout=0.0))
    for name, param in tower.named_parameters():
        if "lora_B" in name:  # as after a few steps: a zero B would block the gradient to A
            torch.nn.init.normal_(param, std=0.01)
    return model


def test_token_context_is_the_empty_prompt_plus_each_projected_token_at_its_own_position():
    torch.manual_seed(0)
    projector = ConditionProjector(16, 8)
    tokens, empty = torch.randn(2, 3, 16), torch.randn(1, 5, 8)
    context = projector(tokens, empty)
    by_hand = empty.repeat(2, 1, 1)
    for image in range(2):
        for n in range(3):
            by_hand[image, n] += projector.net(tokens[image, n])
    assert context.shape == (2, 5, 8)
    torch.testing.assert_close(context, by_hand)
    assert torch.equal(context[:, 3:], empty.expand(2, -1, -1)[:, 3:])  # the tokens beyond N stay the empty prompt's


def test_n_tokens_are_distinct_patches_in_order_drawn_from_the_generator(tiny):
    model = build(tiny, condition_tokens=5)
    pixels = model.tower.normalize(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    every = model.tower.patch_features(pixels, -2)
    first = model.condition_tokens(pixels, torch.Generator().manual_seed(7))
    again = model.condition_tokens(pixels, torch.Generator().manual_seed(7))
    other = model.condition_tokens(pixels, torch.Generator().manual_seed(8))
    assert first.shape == (3, 5, every.shape[-1]) and torch.equal(first, again) and not torch.equal(first, other)
    for image in range(3):
        rows = [int(torch.nonzero((every[image] == token).all(-1))[0]) for token in first[image]]
        assert len(set(rows)) == 5 and rows == sorted(rows)
    model.config.condition_tokens = 0
    assert torch.equal(model.condition_tokens(pixels), every)


@pytest.mark.parametrize("name", ["dcr", "reconstruction", "naive"])
def test_the_gradient_reaches_the_patch_tokens_under_every_objective(tiny, name):
    model = build(tiny, name=name, condition_tokens=6)
    seen = []
    original = model.tower.patch_features

    def kept(pixels, layer):
        tokens = original(pixels, layer)
        tokens.retain_grad()
        seen.append(tokens)
        return tokens

    model.tower.patch_features = kept
    loss, _ = model(
        torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)), torch.Generator().manual_seed(3)
    )
    loss.backward()
    assert seen and seen[0].grad is not None and seen[0].grad.abs().sum() > 0
    layers = model.tower.spec.num_layers
    lora = {n: p for n, p in model.tower.named_parameters() if "lora_A" in n}
    # layer -2 is the output of block L-2: every block up to it learns; the last block only from
    # naive's contrastive term, which is on the global embedding
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.items() if f"layers.{layers - 1}." not in n
    )
    last = [p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.items() if f"layers.{layers - 1}." in n]
    assert last and all(last) if name == "naive" else not any(last)


def test_chunked_token_predictions_give_the_same_loss_and_gradients(tiny):
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    results = []
    for chunk in (0, 5):
        model = build(tiny, condition_tokens=4, chunk_size=chunk)
        loss, _ = model(images, torch.Generator().manual_seed(1))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-5, rtol=1e-4)


def test_bf16_token_step_is_finite(tiny):
    model = build(tiny, condition_tokens=4).to(torch.bfloat16)
    loss, _ = model(torch.rand(3, 3, 32, 32), torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_print_config_shows_both_forms_and_the_projector_reads_the_token_width(capsys):
    assert main(["enhance", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["objective"]["condition"] == "global"
    assert main(["enhance", "--print-config", "objective.condition=tokens", "objective.condition_tokens=8"]) == 0
    objective = yaml.safe_load(capsys.readouterr().out)["objective"]
    assert (
        objective["condition"] == "tokens" and objective["condition_tokens"] == 8 and objective["condition_layer"] == -2
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["objective.condition_tokens=8"], "objective.condition_tokens is read only with objective.condition=tokens"),
        (
            ["objective.condition=tokens", "objective.condition_tokens=-1"],
            "objective.condition_tokens=-1: give a number",
        ),
        (
            ["objective.condition=tokens", "objective.condition_layer=9"],
            "objective.condition_layer=9: the tower has hidden layers",
        ),
        (["objective.condition=patches"], "objective.condition"),
    ],
)
def test_bad_token_settings_fail_in_one_line_before_anything_runs(tiny, tmp_path, capsys, overrides, message):
    assert main(["enhance", f"output_dir={tmp_path / 'out'}", *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_more_tokens_than_the_context_holds_are_refused():
    from dcr_mllm.enhance.config import check_condition_tokens
    from dcr_mllm.errors import ConfigError
    from dcr_mllm.towers import TowerSpec
    from dcr_mllm.towers.clip import CLIP

    vit_l = TowerSpec(CLIP, 224, 14, 1024, 24, 768, (0.5,) * 3, (0.5,) * 3, True)  # 256 patches
    with pytest.raises(ConfigError, match="gives 256 tokens per image, more than the denoiser's 77 context tokens"):
        check_condition_tokens(objective_settings(condition="tokens"), vit_l, 77)
    check_condition_tokens(objective_settings(condition="tokens", condition_tokens=77), vit_l, 77)
