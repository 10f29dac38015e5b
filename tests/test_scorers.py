"""Each scorer against values computed by hand (SNIP) or by finite differences (GraSP)."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from sparse_adapter.backbones import second_order_attention
from sparse_adapter.pruning import SCORERS, PrunerConfig, prune
from tests.conftest import tiny_model


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def linear_problem(seed=0):
    """One weight matrix W, loss ½‖Wx − y‖² per batch: the gradient is (Wx − y)xᵀ in closed form."""
    generator = torch.Generator().manual_seed(seed)
    W = torch.nn.Parameter(torch.randn(3, 4, generator=generator))
    batches = [(torch.randn(5, 4, generator=generator), torch.randn(5, 3, generator=generator)) for _ in range(3)]

    def loss_fn(batch, temperature=1.0):
        x, y = batch
        return 0.5 * ((x @ W.T - y) ** 2).sum()

    return W, batches, loss_fn


def test_snip_is_w_times_gradient_summed_over_batches():
    W, batches, loss_fn = linear_problem()
    scores = SCORERS["snip"](params={"W": W}, loss_fn=loss_fn, batches=batches)
    by_hand = sum((x @ W.detach().T - y).T @ x for x, y in batches)  # Σ_b (W x − y) xᵀ
    torch.testing.assert_close(scores["W"], (W.detach() * by_hand).abs())
    assert W.grad is None  # nothing left behind for the first optimizer step


def test_magnitude_and_random():
    W, _, _ = linear_problem()
    torch.testing.assert_close(SCORERS["magnitude"](params={"W": W})["W"], W.detach().abs())
    first = SCORERS["random"](params={"W": W}, generator=torch.Generator().manual_seed(1))["W"]
    again = SCORERS["random"](params={"W": W}, generator=torch.Generator().manual_seed(1))["W"]
    other = SCORERS["random"](params={"W": W}, generator=torch.Generator().manual_seed(2))["W"]
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert float(first.min()) >= 0 and float(first.max()) < 1


def two_layer_problem(seed=0):
    """A nonlinear classifier, so the Hessian is not trivial."""
    generator = torch.Generator().manual_seed(seed)
    W1 = torch.nn.Parameter(torch.randn(5, 4, generator=generator))
    W2 = torch.nn.Parameter(torch.randn(3, 5, generator=generator))
    batches = [(torch.randn(6, 4, generator=generator), torch.randint(0, 3, (6,), generator=generator)) for _ in range(2)]

    def logits(w1, w2, x):
        return torch.tanh(x @ w1.T) @ w2.T

    def loss_fn(batch, temperature=1.0):
        x, y = batch
        return F.cross_entropy(logits(W1, W2, x) / temperature, y)

    def total_gradient(w1, w2, temperature):
        w1 = w1.detach().requires_grad_(True)
        w2 = w2.detach().requires_grad_(True)
        loss = sum(F.cross_entropy(logits(w1, w2, x) / temperature, y) for x, y in batches)
        return torch.autograd.grad(loss, (w1, w2))

    return (W1, W2), batches, loss_fn, total_gradient


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_grasp_matches_a_finite_difference_hessian_vector_product(temperature):
    (W1, W2), batches, loss_fn, total_gradient = two_layer_problem()
    scores = SCORERS["grasp"](params={"W1": W1, "W2": W2}, loss_fn=loss_fn, batches=batches, temperature=temperature)

    g1, g2 = total_gradient(W1, W2, temperature)
    eps = 1e-5
    plus = total_gradient(W1 + eps * g1, W2 + eps * g2, temperature)
    minus = total_gradient(W1 - eps * g1, W2 - eps * g2, temperature)
    hg1, hg2 = ((p - m) / (2 * eps) for p, m in zip(plus, minus))

    # keep-the-highest w·Hg  ==  remove-the-highest GraSP score −w·Hg
    torch.testing.assert_close(scores["W1"], W1.detach() * hg1, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(scores["W2"], W2.detach() * hg2, rtol=1e-6, atol=1e-9)
    assert W1.grad is None and W2.grad is None


def test_grasp_removes_the_highest_negative_w_hg():
    (W1, W2), batches, loss_fn, _ = two_layer_problem()
    params = {"W1": W1, "W2": W2}
    scores = SCORERS["grasp"](params=params, loss_fn=loss_fn, batches=batches, temperature=1.0)
    masks = prune(params, 0.5, PrunerConfig(scorer="grasp", options={"temperature": 1.0}), loss_fn, batches)
    grasp_score = torch.cat([-scores[n].view(-1) for n in params])
    kept = torch.cat([masks[n].view(-1) for n in params])
    assert int(kept.sum()) == 18  # round(0.5 · 35) = 17.5 → 18
    assert grasp_score[kept].max() <= grasp_score[~kept].min()


def test_snip_pruning_keeps_the_most_sensitive():
    W, batches, loss_fn = linear_problem()
    masks = prune({"W": W}, 0.25, PrunerConfig(scorer="snip"), loss_fn, batches)
    scores = SCORERS["snip"](params={"W": W}, loss_fn=loss_fn, batches=batches)["W"]
    assert int(masks["W"].sum()) == 9
    assert scores[masks["W"]].min() >= scores[~masks["W"]].max()


def test_grasp_uses_sdpa_math_only_for_the_double_backward_pass():
    """SDPA's fused kernels have no double backward; the gradient pass keeps them, the Hg pass takes SDPA's math kernel."""
    torch.set_default_dtype(torch.float32)
    model = tiny_model(attn="sdpa")[0].eval()
    params = {n: p for n, p in model.named_parameters() if n.endswith("attention.output.dense.weight")}
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randint(5, 90, (2, 7), generator=generator), torch.tensor([0, 1])) for _ in range(2)]
    seen = []

    def loss_fn(batch, temperature=1.0):
        seen.append((model.config._attn_implementation, torch.backends.cuda.flash_sdp_enabled()))
        ids, labels = batch
        return F.cross_entropy(model(input_ids=ids).logits / temperature, labels)

    masks = prune(params, 0.5, PrunerConfig(scorer="grasp", batches=2), loss_fn, batches, model=model)
    assert seen == [("sdpa", True)] * 2 + [("sdpa", False)] * 2
    assert model.config._attn_implementation == "sdpa" and torch.backends.cuda.flash_sdp_enabled()
    assert sum(int(m.sum()) for m in masks.values()) == round(0.5 * sum(p.numel() for p in params.values()))


def test_grasp_scores_through_sdpa_math_equal_those_through_eager_attention():
    """The Hg pass's kernel choice is a speed choice only: SDPA's math path and eager modules score alike."""
    torch.set_default_dtype(torch.float32)
    scores = {}
    for attn in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = tiny_model(attn=attn)[0].eval()
        params = {n: p for n, p in model.named_parameters() if n.endswith("attention.output.dense.weight")}
        generator = torch.Generator().manual_seed(0)
        batches = [(torch.randint(5, 90, (2, 7), generator=generator), torch.tensor([0, 1])) for _ in range(2)]
        mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])

        def loss_fn(batch, temperature=1.0):
            ids, labels = batch
            return F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits / temperature, labels)

        scores[attn] = SCORERS["grasp"](params=params, loss_fn=loss_fn, batches=batches, temperature=200.0,
                                        double_backward=partial(second_order_attention, model))
    for name in scores["sdpa"]:
        torch.testing.assert_close(scores["sdpa"][name], scores["eager"][name], rtol=1e-4, atol=1e-12)
        assert scores["sdpa"][name].abs().max() > 0
