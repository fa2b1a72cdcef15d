"""dcr_loss against a literal transcription of the formula (exp / sum / log, as upstream writes it)."""

import pytest
import torch
import torch.nn.functional as F

from dcr_mllm.objectives.dcr import dcr_loss


def literal_dcr_loss(pairwise, positive, target, tau=0.1):
    batch = pairwise.shape[0]
    losses = []
    for i in range(batch):
        a = F.normalize(pairwise[i, i].flatten(), dim=0)
        p = F.normalize(positive[i].flatten(), dim=0)
        g = F.normalize(target[i].flatten(), dim=0)
        sims = [torch.dot(a, p) / tau, torch.dot(a, g) / tau]
        sims += [torch.dot(a, F.normalize(pairwise[i, k].flatten(), dim=0)) / tau for k in range(batch) if k != i]
        denominator = sum(torch.exp(s) for s in sims)
        loss_p = -torch.log(torch.exp(sims[0]) / denominator)
        loss_g = -torch.log(torch.exp(sims[1]) / denominator)
        losses.append(0.5 * (loss_p + loss_g))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("batch", [1, 2, 8])
def test_matches_literal_formula(batch):
    gen = torch.Generator().manual_seed(batch)
    pairwise = torch.randn(batch, batch, 4, 3, 3, generator=gen)
    positive = torch.randn(batch, 4, 3, 3, generator=gen)
    target = torch.randn(batch, 4, 3, 3, generator=gen)
    torch.testing.assert_close(
        dcr_loss(pairwise, positive, target), literal_dcr_loss(pairwise, positive, target), atol=1e-5, rtol=1e-5
    )


def test_gradients_match_literal_formula():
    gen = torch.Generator().manual_seed(0)
    pairwise = torch.randn(4, 4, 8, generator=gen, requires_grad=True)
    positive = torch.randn(4, 8, generator=gen, requires_grad=True)
    target = torch.randn(4, 8, generator=gen)
    grads = torch.autograd.grad(dcr_loss(pairwise, positive, target), [pairwise, positive])
    expected = torch.autograd.grad(literal_dcr_loss(pairwise, positive, target), [pairwise, positive])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_batch_of_one_has_no_negatives():
    """With B = 1 the only candidates are the two positives: loss = log 2 + ... exactly."""
    pairwise = torch.randn(1, 1, 16)
    positive, target = pairwise[0].clone(), pairwise[0].clone()  # both perfectly aligned
    assert dcr_loss(pairwise, positive, target).item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-6)


def test_finite_where_literal_overflows():
    gen = torch.Generator().manual_seed(0)
    pairwise = torch.randn(4, 4, 32, generator=gen)
    positive, target = torch.randn(4, 32, generator=gen), torch.randn(4, 32, generator=gen)
    tau = 1e-3  # similarities of order 1/tau = 1000: exp() overflows float32
    assert not torch.isfinite(literal_dcr_loss(pairwise, positive, target, tau))
    assert torch.isfinite(dcr_loss(pairwise, positive, target, tau))


def test_finite_for_bf16_inputs():
    gen = torch.Generator().manual_seed(0)
    pairwise = torch.randn(8, 8, 4, 8, 8, generator=gen).bfloat16()
    loss = dcr_loss(pairwise, pairwise[:, 0], pairwise[:, 1])
    assert torch.isfinite(loss) and loss.dtype == torch.float32


def test_pulls_anchor_towards_positives():
    """Gradient descent on the loss must make the anchor closer to the target than a negative."""
    gen = torch.Generator().manual_seed(0)
    pairwise = torch.randn(4, 4, 16, generator=gen, requires_grad=True)
    positive, target = torch.randn(4, 16, generator=gen), torch.randn(4, 16, generator=gen)
    start = dcr_loss(pairwise, positive, target).item()
    optimizer = torch.optim.SGD([pairwise], lr=1.0)
    for _ in range(50):
        optimizer.zero_grad()
        dcr_loss(pairwise, positive, target).backward()
        optimizer.step()
    assert dcr_loss(pairwise, positive, target).item() < start - 1.0


def test_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="pairwise"):
        dcr_loss(torch.randn(3, 2, 4), torch.randn(3, 4), torch.randn(3, 4))
