"""One stage-one step on the tiny preset: gradients reach exactly what trains; chunking is exact."""

import pytest
import torch

from dcr_mllm.diffusion import ConditionProjector, FrozenDenoiser
from dcr_mllm.objectives import EnhanceModel, objective_settings
from dcr_mllm.objectives.dcr import dcr_pairs, predict_pairs
from dcr_mllm.towers import apply_lora, load_tower
from dcr_mllm.towers.lora import LoraSettings


def build(tiny, family, setting, **objective):
    torch.manual_seed(0)
    tower = load_tower(tiny[family], vision_only=True)
    denoiser = FrozenDenoiser.from_pretrained(tiny["sd"])
    projector = ConditionProjector(tower.spec.global_dim, denoiser.cross_attention_dim)
    model = EnhanceModel(tower, projector, denoiser, objective_settings(**objective))
    model.requires_grad_(False)
    if setting == "projector":
        projector.requires_grad_(True)
    else:
        apply_lora(tower, LoraSettings(r=4, alpha=4, dropout=0.0))
        for name, param in tower.named_parameters():
            if "lora_B" in name:  # as after a few steps: a zero B would block the gradient to A
                torch.nn.init.normal_(param, std=0.01)
    return model


@pytest.mark.parametrize("family", ["clip", "siglip", "open_clip"])
@pytest.mark.parametrize("setting", ["projector", "lora"])
def test_gradients_reach_exactly_the_trained_parameters(tiny, family, setting):
    model = build(tiny, family, setting)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss, metrics = model(images, torch.Generator().manual_seed(2))
    assert torch.isfinite(loss) and metrics["loss"] == pytest.approx(loss.item())
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    meant = {n for n, p in model.named_parameters() if p.requires_grad}
    assert meant and with_grad == meant
    if setting == "projector":
        assert all(n.startswith("projector.") for n in meant)
    else:
        assert all(n.startswith("tower.") and "lora_" in n for n in meant)
    assert not any(p.grad is not None for p in model.denoiser.parameters()), "the UNet and VAE must stay frozen"


@pytest.mark.parametrize("name", ["reconstruction", "naive"])
def test_ablation_objectives_train_the_same_parameters(tiny, name):
    model = build(tiny, "clip", "lora", name=name)
    loss, metrics = model(torch.rand(4, 3, 32, 32), torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    if name == "naive":
        assert metrics["loss"] == pytest.approx(metrics["reconstruction"] + metrics["contrastive"], rel=1e-5)


def test_same_generator_same_loss(tiny):
    model = build(tiny, "clip", "projector")
    images = torch.rand(4, 3, 32, 32)
    first, _ = model(images, torch.Generator().manual_seed(5))
    second, _ = model(images, torch.Generator().manual_seed(5))
    third, _ = model(images, torch.Generator().manual_seed(6))
    assert first.item() == second.item() and first.item() != third.item()


def saved_tensor_bytes(fn):
    """Bytes autograd keeps for backward during fn(): the activation memory of the forward."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, total


def run_with_chunk(model, images, chunk_size):
    model.config.chunk_size = chunk_size
    model.zero_grad()
    (loss, _), saved = saved_tensor_bytes(lambda: model(images, torch.Generator().manual_seed(3)))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, saved


@pytest.mark.parametrize("setting", ["projector", "lora"])
def test_chunked_equals_unchunked_and_keeps_less_for_backward(tiny, setting):
    model = build(tiny, "clip", setting)
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loss_full, grads_full, saved_full = run_with_chunk(model, images, 0)  # 16*16+16 = 272 calls in one batch
    loss_chunk, grads_chunk, saved_chunk = run_with_chunk(model, images, 16)
    torch.testing.assert_close(loss_chunk, loss_full, atol=1e-5, rtol=1e-5)
    for name in grads_full:
        torch.testing.assert_close(grads_chunk[name], grads_full[name], atol=1e-5, rtol=1e-4)
    assert saved_chunk < saved_full / 4, f"chunked keeps {saved_chunk} bytes, unchunked {saved_full}"


def test_pairs_cover_the_grid_then_the_positives():
    pairs = dcr_pairs(3)
    assert pairs.tolist() == [
        [0, 0],
        [0, 1],
        [0, 2],
        [1, 0],
        [1, 1],
        [1, 2],
        [2, 0],
        [2, 1],
        [2, 2],
        [0, 3],
        [1, 4],
        [2, 5],
    ]


def test_predict_pairs_indexes_latents_and_contexts():
    noisy, timesteps, contexts = torch.arange(3.0), torch.zeros(3), torch.arange(6.0) * 10
    pairs = dcr_pairs(3)
    out = predict_pairs(lambda x, t, c: x + c, noisy, timesteps, contexts, pairs, chunk_size=5)
    assert out.tolist() == [float(noisy[i] + contexts[j]) for i, j in pairs.tolist()]
