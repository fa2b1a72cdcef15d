"""DCR negatives from the global batch: the sampler, the one loss formula, and exactness across ranks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from dcr_mllm.cli import main
from dcr_mllm.diffusion import ConditionProjector
from dcr_mllm.errors import ConfigError
from dcr_mllm.objectives.dcr import contrastive_loss, dcr_loss
from dcr_mllm.objectives.negatives import sample_negatives, sampled_pairs

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.mark.parametrize(
    "batch, total, offset, k", [(4, 8, 4, 7), (4, 8, 0, 3), (1, 2, 1, 1), (3, 3, 0, 0), (8, 16, 8, 5)]
)
def test_sampler_draws_distinct_others(batch, total, offset, k):
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        drawn = sample_negatives(batch, total, offset, k, gen)
        assert drawn.shape == (batch, k)
        for i, row in enumerate(drawn.tolist()):
            assert offset + i not in row, "an anchor is never its own negative"
            assert len(set(row)) == k, "without replacement"
            assert all(0 <= j < total for j in row)


def test_sampler_is_uniform_over_the_other_images():
    """Each other image is drawn with probability K / (N - 1): an unbiased subset of all negatives."""
    batch, total, offset, k, draws = 4, 12, 4, 3, 3000
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(batch, total)
    for _ in range(draws):
        drawn = sample_negatives(batch, total, offset, k, gen)
        counts.scatter_add_(1, drawn, torch.ones(batch, k))
    is_self = torch.zeros(batch, total, dtype=torch.bool)
    is_self[torch.arange(batch), offset + torch.arange(batch)] = True
    assert counts[is_self].sum() == 0
    expected = draws * k / (total - 1)  # about 818; one standard deviation is about 24
    others = counts[~is_self]
    assert (others > 0).all(), "every other image is reachable"
    assert ((others - expected).abs() < 0.12 * expected).all(), counts


def test_sampler_seeded_by_the_generator():
    first = sample_negatives(4, 16, 8, 5, torch.Generator().manual_seed(3))
    again = sample_negatives(4, 16, 8, 5, torch.Generator().manual_seed(3))
    other = sample_negatives(4, 16, 8, 5, torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_sampler_refuses_more_negatives_than_other_images():
    with pytest.raises(ConfigError, match="objective.num_negatives=8 cannot be drawn from the 7 other images"):
        sample_negatives(4, 8, 0, 8, None)


def test_sampled_pairs_layout():
    negatives = torch.tensor([[3, 1], [0, 2]])  # rank 1 of two ranks of B = 2: global images 2 and 3
    pairs = sampled_pairs(2, 4, 2, negatives)
    # anchors (latent i, own condition 2 + i), positives (i, augmented view 4 + i), then negatives row by row
    assert pairs.tolist() == [[0, 2], [1, 3], [0, 4], [1, 5], [0, 3], [0, 1], [1, 0], [1, 2]]


def literal_loss(anchor, positive, target, negatives, tau=0.1):
    """The DCR formula with explicit negatives, written out with exp / sum / log."""
    losses = []
    for i in range(anchor.shape[0]):
        a = F.normalize(anchor[i].flatten(), dim=0)
        sims = [
            torch.dot(a, F.normalize(positive[i].flatten(), dim=0)) / tau,
            torch.dot(a, F.normalize(target[i].flatten(), dim=0)) / tau,
        ]
        sims += [torch.dot(a, F.normalize(n.flatten(), dim=0)) / tau for n in negatives[i]]
        denominator = sum(torch.exp(s) for s in sims)
        losses.append(
            -0.5 * (torch.log(torch.exp(sims[0]) / denominator) + torch.log(torch.exp(sims[1]) / denominator))
        )
    return torch.stack(losses).mean()


@pytest.mark.parametrize("k", [0, 1, 5])
def test_contrastive_loss_matches_literal_formula(k):
    gen = torch.Generator().manual_seed(k)
    anchor, positive, target = (torch.randn(3, 4, 2, 2, generator=gen) for _ in range(3))
    negatives = torch.randn(3, k, 4, 2, 2, generator=gen)
    torch.testing.assert_close(
        contrastive_loss(anchor, positive, target, negatives),
        literal_loss(anchor, positive, target, negatives),
        atol=1e-5,
        rtol=1e-5,
    )


def test_dcr_loss_is_contrastive_loss_over_the_other_images_in_any_order():
    gen = torch.Generator().manual_seed(0)
    pairwise = torch.randn(4, 4, 8, generator=gen)
    positive, target = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    anchor = pairwise[torch.arange(4), torch.arange(4)]
    shuffled = torch.stack([pairwise[i, [k for k in (3, 1, 0, 2) if k != i]] for i in range(4)])
    torch.testing.assert_close(
        dcr_loss(pairwise, positive, target), contrastive_loss(anchor, positive, target, shuffled), atol=1e-6, rtol=1e-6
    )


def test_projector_project_then_broadcast_is_its_forward():
    torch.manual_seed(0)
    projector = ConditionProjector(16, 8)
    embedding, empty = torch.randn(3, 16), torch.randn(1, 5, 8)
    projected = projector.project(embedding)
    assert projected.shape == (3, 8)
    assert torch.equal(projector.broadcast(projected, empty), projector(embedding, empty))


def build(tiny, **objective):
    """A LoRA-stage model (projector trains too, so both paths of the gradient are checked)."""
    sys.path.insert(0, str(HERE))
    from negatives_ranks import build as build_model

    return build_model(str(tiny["clip"]), str(tiny["sd"]), **objective)


def loss_and_grads(model, images, seed):
    model.zero_grad()
    loss, _ = model(images, torch.Generator().manual_seed(seed))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_global_on_one_rank_with_all_others_is_local(tiny):
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loss_local, grads_local = loss_and_grads(build(tiny), images, 1)
    loss_global, grads_global = loss_and_grads(build(tiny, negatives="global", num_negatives=3), images, 1)
    torch.testing.assert_close(loss_global, loss_local, atol=1e-5, rtol=1e-5)
    for name in grads_local:
        torch.testing.assert_close(grads_global[name], grads_local[name], atol=1e-5, rtol=1e-4)


def test_global_runs_k_plus_two_unet_calls_per_image_and_chunks_exactly(tiny):
    model = build(tiny, negatives="global", num_negatives=2)
    predict, rows = model.denoiser.predict, []

    def counted(noisy, timesteps, context):
        rows.append(len(noisy))
        return predict(noisy, timesteps, context)

    model.denoiser.predict = counted
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loss_full, grads_full = loss_and_grads(model, images, 2)
    assert rows == [5 * (2 + 2)], "one anchor, one positive and K = 2 negatives per image, in one call"
    model.config.chunk_size = 7
    loss_chunk, grads_chunk = loss_and_grads(model, images, 2)
    torch.testing.assert_close(loss_chunk, loss_full, atol=1e-5, rtol=1e-5)
    for name in grads_full:
        torch.testing.assert_close(grads_chunk[name], grads_full[name], atol=1e-5, rtol=1e-4)


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_print_config_shows_the_negatives(capsys):
    code, out, err = run(
        ["enhance", "--print-config", "objective.negatives=global", "objective.num_negatives=15"], capsys
    )
    assert code == 0, err
    printed = yaml.safe_load(out)["objective"]
    assert printed["negatives"] == "global" and printed["num_negatives"] == 15
    code, out, err = run(["enhance", "--print-config"], capsys)
    assert (
        yaml.safe_load(out)["objective"]["negatives"] == "local"
        and yaml.safe_load(out)["objective"]["num_negatives"] == 0
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["objective.num_negatives=3"], "objective.num_negatives=3: set 0"),
        (["objective.negatives=global", "objective.num_negatives=-1"], "objective.num_negatives=-1: set 0"),
        (
            ["objective.negatives=global", "objective.name=reconstruction"],
            "unknown config key 'objective.negatives' for objective 'reconstruction'",
        ),
        (["objective.negatives=everywhere"], "objective.negatives"),
    ],
)
def test_bad_negatives_settings_are_refused(capsys, overrides, message):
    code, out, err = run(["enhance", "--print-config", *overrides], capsys)
    assert code == 2 and message in err and not out


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("condition", ["global", "tokens"])
def test_two_ranks_global_equal_one_rank_local(tiny, tmp_path, condition):
    """Two gloo ranks of B/2 with K = every other image of the global batch against one rank of B
    with local negatives, from the same fixed inputs. DeepSpeed and DDP average the ranks'
    gradients, so the mean of the two ranks' gradients must equal the single rank's gradient
    (the gathered conditions send each rank's share of the other rank's loss back to it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(HERE / "negatives_ranks.py"),
        str(tiny["clip"]),
        str(tiny["sd"]),
        str(tmp_path),
        condition,
    ]
    result = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [load_file(tmp_path / f"global_rank{r}.safetensors") for r in range(2)]
    single = load_file(tmp_path / "local.safetensors")
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"]), "each rank computes its own images' loss"
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, single["loss"], atol=1e-5, rtol=1e-5)
    names = [n for n in single if n != "loss"]
    assert any(n.startswith("projector.") for n in names) and any("lora_" in n for n in names)
    for name in names:
        torch.testing.assert_close((ranks[0][name] + ranks[1][name]) / 2, single[name], atol=1e-5, rtol=1e-4)
        assert not torch.allclose(ranks[0][name], ranks[1][name]), f"{name}: ranks differ before averaging"


def test_more_negatives_than_the_global_batch_holds_fail_before_building(tiny, tmp_path):
    """One rank of 4: 3 other images, so K = 4 is refused with exit 2 once the world size is known."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DCR_MLLM_CACHE": str(Path(tiny["clip"]).parents[1])}
    args = [
        "enhance",
        f"output_dir={tmp_path / 'run'}",
        "objective.negatives=global",
        "objective.num_negatives=4",
        "projector_stage.micro_batch_size=4",
        "lora_stage.micro_batch_size=4",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "dcr_mllm.cli", *args],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "objective.num_negatives=4 cannot be drawn from the 3 other images of the global batch" in result.stderr
    assert not (tmp_path / "run" / "projector").exists()
