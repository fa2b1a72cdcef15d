"""Run by torchrun (two gloo ranks) from test_negatives.py: the same DCR step split over ranks.

Every rank builds the same models and the same fixed inputs (images of both views, noisy latents,
timesteps, targets for B images), takes its half, and computes the loss with negatives=global and
K = every other image of the global batch. Rank 0 also computes the loss of all B images on one
rank with negatives=local. Each writes its loss and the gradients of everything that trains.
A fourth argument, ``tokens``, conditions on patch tokens instead of the global embedding.
"""

import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from dcr_mllm.diffusion import ConditionProjector, FrozenDenoiser
from dcr_mllm.objectives import EnhanceModel, objective_settings
from dcr_mllm.towers import apply_lora, load_tower
from dcr_mllm.towers.lora import LoraSettings

BATCH = 4


def build(clip: str, sd: str, **objective) -> EnhanceModel:
    """The same trainable projector and LoRA (non-zero B, as after some steps) on every call."""
    torch.manual_seed(0)
    tower = load_tower(clip, vision_only=True)
    denoiser = FrozenDenoiser.from_pretrained(sd)
    width = tower.spec.hidden_size if objective.get("condition") == "tokens" else tower.spec.global_dim
    projector = ConditionProjector(width, denoiser.cross_attention_dim)
    model = EnhanceModel(tower, projector, denoiser, objective_settings(**objective))
    model.requires_grad_(False)
    apply_lora(tower, LoraSettings(r=4, alpha=4, dropout=0.0))
    for name, param in tower.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.01)
    projector.requires_grad_(True)
    return model


def step(model: EnhanceModel, inputs: dict, rows: slice, generator: torch.Generator) -> dict:
    """Loss and gradients for the images in ``rows``, from the given fixed tensors."""
    views = torch.cat([inputs["base"][rows], inputs["augmented"][rows]])
    tokens = model.config.condition == "tokens"  # all patches: the sampled subset is the generator's, not the inputs'
    conditions = (
        model.tower.patch_features(views, model.config.condition_layer)
        if tokens
        else model.tower.global_embedding(views)
    )
    loss = model.dcr_objective(
        conditions, inputs["noisy"][rows], inputs["timesteps"][rows], inputs["target"][rows], generator
    )
    loss.backward()
    # with token conditions from layer -2 the last block's LoRA gets no gradient (None)
    grads = {
        name: param.grad for name, param in model.named_parameters() if param.requires_grad and param.grad is not None
    }
    return {"loss": loss.detach().reshape(1), **grads}


def main(clip: str, sd: str, out: str, condition: str = "global") -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator().manual_seed(1)
    inputs = {
        "base": torch.randn(BATCH, 3, 32, 32, generator=gen),
        "augmented": torch.randn(BATCH, 3, 32, 32, generator=gen),
        "noisy": torch.randn(BATCH, 4, 8, 8, generator=gen),
        "timesteps": torch.randint(0, 1000, (BATCH,), generator=gen),
        "target": torch.randn(BATCH, 4, 8, 8, generator=gen),
    }
    per_rank = BATCH // world
    model = build(clip, sd, negatives="global", num_negatives=BATCH - 1, condition=condition)
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    save_file(
        step(model, inputs, rows, torch.Generator().manual_seed(100 + rank)), f"{out}/global_rank{rank}.safetensors"
    )
    if rank == 0:
        reference = build(clip, sd, negatives="local", condition=condition)
        save_file(
            step(reference, inputs, slice(0, BATCH), torch.Generator().manual_seed(0)), f"{out}/local.safetensors"
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
