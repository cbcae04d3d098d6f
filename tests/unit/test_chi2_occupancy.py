"""ORPO's chi-squared occupancy-measure penalty (Correlated Proxies, arXiv 2403.03185): spec section 6's
worked example and quirk, the penalty's branches, the discriminator (loss, gradients, Adam, learning),
the advantage by hand, and the base_rollouts part on the tiny model with a scripted engine.

Expected values are derived by hand in each docstring or computed independently with numpy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scripted_engine import CharTokenizer, char_generation, exact_reward, group_rollout

from anypo import models
from anypo.advantages.chi2 import (
    Chi2Occupancy,
    adam_step,
    chi2_occupancy,
    chi2_penalty,
    discriminator_logits,
    discriminator_loss,
    init_discriminator,
    trimmed_chi2,
)
from anypo.algorithms import PRESETS
from anypo.engines.base import SamplingConfig
from anypo.rollout import Request
from anypo.rollout.base_samples import (
    BASE_FEATURES,
    BASE_REWARDS,
    FEATURES,
    BaseRollouts,
    BaseRolloutsConfig,
)
from anypo.tasks.base import Example
from anypo.types import RolloutBatch


def sp(x):
    return np.log1p(np.exp(x))


# ---- spec section 6 ----
def test_spec_worked_example():
    """Spec: disc loss of d_pi = [0.5, 1.0], d_base = [-0.2, 0.1] is 1.064937; for d = linspace(-1, 1, 100),
    c = e^d - 1, the 1%-trimmed mean (i = int(0.01 * 100) = 1) is chi2 = 0.171488, dist[0] = -1.526453,
    dist[-1] = 4.149329, and with coefficient 0.05 the reward deltas are +0.076323 and -0.207466."""
    loss = discriminator_loss(
        torch.tensor([0.5, 1.0], dtype=torch.float64), torch.tensor([-0.2, 0.1], dtype=torch.float64)
    )
    assert float(loss) == pytest.approx(1.064937, abs=1e-6)
    assert float(loss) == pytest.approx(sp(-np.array([0.5, 1.0])).mean() + sp(np.array([-0.2, 0.1])).mean(), rel=1e-12)
    d = torch.linspace(-1, 1, 100, dtype=torch.float64)
    pen, chi2 = chi2_penalty(d, 0.05, 0.01, math.inf)
    assert chi2 == pytest.approx(0.171488, abs=1e-6)
    assert float(pen[0]) / -0.05 == pytest.approx(-1.526453, abs=1e-6)
    assert float(pen[-1]) / -0.05 == pytest.approx(4.149329, abs=1e-6)
    assert float(pen[0]) == pytest.approx(0.076323, abs=1e-6) and float(pen[-1]) == pytest.approx(-0.207466, abs=1e-6)


def test_short_batches_keep_their_penalty():
    """The code's quirk: with n = 50, i = int(0.01 * 50) = 0 and sort(c)[0:-0] is empty, so its chi2 is NaN
    and the penalty vanishes. Here i = max(1, 0) = 1: chi2 = mean(sort(c)[1:49]) and the penalty is
    -lam c / sqrt(chi2)."""
    d = np.linspace(-1, 1, 50)
    c = np.exp(d) - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.isnan(np.sort(c)[0:-0].mean())  # the official code's estimate
    chi = np.sort(c)[1:-1].mean()
    pen, chi2 = chi2_penalty(torch.tensor(d), 0.1, 0.01, math.inf)
    assert chi2 == pytest.approx(chi, rel=1e-12)
    np.testing.assert_allclose(pen.numpy(), -0.1 * c / np.sqrt(chi), rtol=1e-12)


def test_penalty_branches_by_hand():
    """(a) d = [-1, -2, -3]: c = e^d - 1 < 0, n = 3, i = 1, chi2 = c(-2) = e^-2 - 1 < 0, so dist = c (the
    code's branch) and p = -lam c. (b) d = [0, 1, 1000]: c = [0, e - 1, inf]; chi2 = the middle value
    e - 1, dist = c / sqrt(e - 1) = [0, sqrt(e - 1), inf -> 0], p = -lam dist. (c) clip 0.5 of
    p = -10 dist. (d) trimmed means: n = 0 -> 0, n = 2 -> the mean, trim 0 -> the mean."""
    d = torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64)
    pen, chi2 = chi2_penalty(d, 0.2, 0.01, math.inf)
    assert chi2 == pytest.approx(math.exp(-2) - 1)
    np.testing.assert_allclose(pen.numpy(), -0.2 * (np.exp([-1.0, -2, -3]) - 1), rtol=1e-12)
    pen, chi2 = chi2_penalty(torch.tensor([0.0, 1.0, 1000.0], dtype=torch.float64), 0.2, 0.01, math.inf)
    assert chi2 == pytest.approx(math.e - 1)
    np.testing.assert_allclose(pen.numpy(), [0.0, -0.2 * math.sqrt(math.e - 1), 0.0], rtol=1e-12)
    pen, _ = chi2_penalty(torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64), 10.0, 0.01, 0.5)
    assert pen.tolist() == [0.5, 0.0, -0.5]  # -10 * (e^-1 - 1)/sqrt(0) -> c branch: 6.32 -> 0.5; -10 (e - 1) -> -0.5
    assert trimmed_chi2(torch.zeros(0), 0.01) == 0.0
    assert trimmed_chi2(torch.tensor([1.0, 3.0]), 0.01) == 2.0
    assert trimmed_chi2(torch.tensor([1.0, 3.0, 8.0]), 0.0) == 4.0
    assert trimmed_chi2(torch.tensor([1.0, 3.0, 8.0]), 0.01) == 3.0


# ---- discriminator ----
def test_discriminator_gradients_by_hand_and_gradcheck():
    """d/dd_pi of mean softplus(-d_pi) is -sigmoid(-d_pi) / n_pi; d/dd_base of mean softplus(d_base) is
    sigmoid(d_base) / n_base. float64 gradcheck of the loss and of the MLP logits in every weight."""
    dp = torch.tensor([0.5, 1.0, -0.3], dtype=torch.float64, requires_grad=True)
    db = torch.tensor([-0.2, 0.1], dtype=torch.float64, requires_grad=True)
    discriminator_loss(dp, db).backward()
    np.testing.assert_allclose(dp.grad.numpy(), -1 / (1 + np.exp([0.5, 1.0, -0.3])) / 3, rtol=1e-12)
    np.testing.assert_allclose(db.grad.numpy(), 1 / (1 + np.exp(-np.array([-0.2, 0.1]))) / 2, rtol=1e-12)
    assert torch.autograd.gradcheck(discriminator_loss, (dp.detach().requires_grad_(), db.detach().requires_grad_()))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    w = [torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)]
    w += [torch.randn(4, generator=g, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)]

    def f(x, w1, b1, w2, b2):
        disc = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
        return discriminator_loss(discriminator_logits(disc, x[:3]), discriminator_logits(disc, x[3:]))

    assert torch.autograd.gradcheck(f, tuple(t.clone().requires_grad_() for t in [x, *w]))


def test_adam_first_step_moves_each_weight_by_lr():
    """Adam's first step: m^ = g, v^ = g^2, so every weight moves by -lr g / (|g| + 1e-8) = -lr sign(g)."""
    disc = init_discriminator(2, 3, seed=0)
    before = {n: disc[n].clone() for n in ("w1", "b1", "w2", "b2")}
    grads = {"w1": torch.tensor([[1.0, -2, 3], [-4, 5, -6]]), "b1": torch.tensor([0.5, -0.5, 2.0])}
    grads |= {"w2": torch.tensor([-1.0, 1, 1]), "b2": torch.tensor(-3.0)}
    adam_step(disc, grads, 0.01)
    for n, g in grads.items():
        torch.testing.assert_close(disc[n], before[n] - 0.01 * torch.sign(g), rtol=0, atol=1e-8)
    assert disc["t"] == 1


def test_discriminator_separates_policy_from_base():
    """Policy features around (+1, +1), base around (-1, -1): after 200 Adam steps (lr 1e-2) the loss has
    fallen, every policy token gets d > 0 and every base token d < 0 (the optimum is d = log mu_pi / mu_base,
    large where only the policy goes)."""
    g = torch.Generator().manual_seed(1)
    xp, xb = torch.randn(64, 2, generator=g) * 0.3 + 1, torch.randn(64, 2, generator=g) * 0.3 - 1
    cfg = Chi2Occupancy(hidden=8, disc_steps=200, disc_lr=1e-2)
    from anypo.advantages.chi2 import train_discriminator

    state = cfg.init_state() | {"disc": init_discriminator(2, 8, 0)}
    before = float(discriminator_loss(discriminator_logits(state["disc"], xp), discriminator_logits(state["disc"], xb)))
    train_discriminator(state, xp, xb, cfg)
    dp, db = discriminator_logits(state["disc"], xp), discriminator_logits(state["disc"], xb)
    assert float(discriminator_loss(dp, db)) < 0.25 * before
    assert (dp > 0).all() and (db < 0).all() and state["updates"] == 200


# ---- the advantage ----
def fixed_disc():
    """d(x) = relu(1 * x + 0) * 1 + 0 = relu(x) for 1-d features."""
    w = {"w1": torch.ones(1, 1), "b1": torch.zeros(1), "w2": torch.ones(1), "b2": torch.zeros(())}
    return w | {
        "m": {n: torch.zeros_like(t) for n, t in w.items()},
        "v": {n: torch.zeros_like(t) for n, t in w.items()},
        "t": 0,
    }


def test_advantage_by_hand():
    """Groups (rows 0, 1) and (rows 2, 3), response lengths 2, 1, 2, 1, features 0.5 0 | 1.0 | 0 0 | 0.2 with
    d = relu(x) (no training): c = e^d - 1 over the 6 tokens; i = max(1, int(0.06)) = 1, chi2 = the mean of
    the 4 middle sorted values. Base rewards 1, 0, 1, 0: running mean 0.5, M2 = 1, std = sqrt(1/3);
    lambda = 0.1 * std. Penalty per token -lambda c / sqrt(chi2), summed per row into R' = R + pen; then
    GRPO (unbiased std, eps 1e-6) per group, computed here with numpy."""
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0]])
    feats = [torch.tensor([[0.5], [0.0]]), torch.tensor([[1.0]]), torch.tensor([[0.0], [0.0]]), torch.tensor([[0.2]])]
    batch = RolloutBatch(
        response_mask=mask,
        group_ids=torch.tensor([0, 0, 1, 1]),
        rewards=torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64),
        extras={
            FEATURES: feats,
            BASE_FEATURES: [torch.tensor([[-1.0]])] * 4,
            BASE_REWARDS: [1.0, 0.0, 1.0, 0.0],
        },
    )
    cfg = Chi2Occupancy(coef=0.1, disc_steps=0)
    state = cfg.init_state() | {"disc": fixed_disc()}
    batch.part_state = state
    A = chi2_occupancy(batch, cfg)

    x = np.array([0.5, 0.0, 1.0, 0.0, 0.0, 0.2])
    c = np.exp(np.maximum(x, 0)) - 1
    chi = np.sort(c)[1:-1].mean()
    lam = 0.1 * np.sqrt(1 / 3)
    p = -lam * c / np.sqrt(chi)
    seq = np.array([p[0] + p[1], p[2], p[3] + p[4], p[5]])
    R = np.array([1.0, 1.0, 0.0, 1.0]) + seq
    exp = np.zeros(4)
    for g in ([0, 1], [2, 3]):
        exp[g] = (R[g] - R[g].mean()) / (R[g].std(ddof=1) + 1e-6)
    np.testing.assert_allclose(A[:, 0].numpy(), exp, rtol=1e-9)
    np.testing.assert_allclose(A[[0, 2], 1].numpy(), exp[[0, 2]], rtol=1e-9)
    assert A[1, 1] == 0 and A[3, 1] == 0
    m = batch.part_metrics
    assert m["chi2"] == pytest.approx(chi) and m["chi2_lambda"] == pytest.approx(lam)
    assert m["chi2_penalty"] == pytest.approx(seq.mean()) and m["chi2_d_base"] == 0.0
    assert (
        state["base_count"] == 4 and state["base_mean"] == pytest.approx(0.5) and state["base_m2"] == pytest.approx(1.0)
    )


def test_advantage_errors_and_config():
    batch = RolloutBatch(response_mask=torch.ones(2, 2), group_ids=torch.tensor([0, 0]), rewards=torch.zeros(2))
    with pytest.raises(ValueError, match="base_rollouts"):
        chi2_occupancy(batch, Chi2Occupancy())
    batch.extras = {FEATURES: [torch.zeros(1, 3)] * 2, BASE_FEATURES: [torch.zeros(1, 3)] * 2, BASE_REWARDS: [0.0, 1.0]}
    with pytest.raises(ValueError, match="tokens per row"):
        chi2_occupancy(batch, Chi2Occupancy())
    for kw, field in (
        ({"coef": -1}, "coef"),
        ({"trim": 0.5}, "trim"),
        ({"disc_lr": 0}, "disc_lr"),
        ({"hidden": 0}, "hidden"),
    ):
        with pytest.raises(ValueError, match=field):
            Chi2Occupancy(**kw)
    with pytest.raises(ValueError, match="feature_dim"):
        BaseRolloutsConfig(feature_dim=0)
    algo = PRESETS["orpo_proxy"].build()
    assert isinstance(algo.advantage, Chi2Occupancy) and isinstance(algo.rollout, BaseRolloutsConfig)
    assert (
        PRESETS["orpo_proxy"].status == "reconstructed" and PRESETS["orpo_proxy"].build(coef=0.2).advantage.coef == 0.2
    )


# ---- the base_rollouts part ----
class WeightEngine:
    """Samples from ``model``: the reply is "7" while the final norm's first weight is 1 (the base
    weights), "x9" otherwise; log-probs -0.5. Records the temperature-free call shapes and load_weights."""

    def __init__(self, model):
        self.model, self.calls, self.loads = model, [], 0

    def load_weights(self, state_dict):
        self.loads += 1

    def generate(self, prompts, n, sampling, seed=None):
        base = float(self.model.model.norm.weight[0].detach()) == 1.0
        self.calls.append((len(prompts), n, base))
        out = "7" if base else "x9"
        return char_generation([out] * (len(prompts) * n), n)


def manual_features(model, prompt, response, proj):
    """Independent: one unpadded forward of prompt + response, the hidden state before each response token
    (positions P-1 .. P+L-2), the token's input embedding, layer norms, projection."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        e = model.get_input_embeddings()(torch.tensor(response))
    P, L = len(prompt), len(response)
    ln = lambda v: (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + 1e-5)
    return torch.cat([ln(h[P - 1 : P + L - 1]), ln(e)], -1) @ proj


def test_base_rollouts_samples_the_base_weights_and_features():
    """The part snapshots the weights at construction; the policy then changes (norm weight 1 -> 2).
    Base samples ("7", reward 1) come from the snapshot swapped in, policy samples ("x9", reward 0) from
    the changed weights, which are intact afterwards; the engine gets load_weights twice per draw. With
    base_samples=1, row 0 of each group is matched with its prompt's base sample, row 1 gets none
    (empty features, NaN reward). Features equal an unpadded forward of the base model computed here."""
    model = models.load_model("tiny", seed=0).eval()
    ex = [Example("q0", "7"), Example("q1", "7")]
    engine = WeightEngine(model)
    groups = group_rollout(engine, ex, exact_reward, 2, SamplingConfig(max_new_tokens=4))
    tok = CharTokenizer()
    prompt_ids = [tok(tok.apply_chat_template([{"content": e.prompt}]))["input_ids"] for e in ex]
    part = BaseRollouts(BaseRolloutsConfig(base_samples=1, feature_dim=5), groups)
    with torch.no_grad():
        model.model.norm.weight.fill_(2.0)  # the policy moves away from the base
    batch = part.collect([Request(0, 2), Request(1, 2)], seed=0, step=0, group_offset=4)
    assert engine.calls == [(2, 2, False), (2, 1, True)] and engine.loads == 2
    assert float(model.model.norm.weight[0].detach()) == 2.0  # the policy's weights are back
    assert batch.rewards.tolist() == [0.0] * 4 and batch.group_ids.tolist() == [4, 4, 5, 5]
    assert batch.extras[BASE_REWARDS][0] == 1.0 and math.isnan(batch.extras[BASE_REWARDS][1])
    assert batch.extras[BASE_REWARDS][2] == 1.0 and math.isnan(batch.extras[BASE_REWARDS][3])
    assert [tuple(f.shape) for f in batch.extras[FEATURES]] == [(2, 5)] * 4
    assert [tuple(f.shape) for f in batch.extras[BASE_FEATURES]] == [(1, 5), (0, 5), (1, 5), (0, 5)]
    m = part.pop_metrics()
    assert m["rollout/base_reward"] == 1.0 and m["rollout/base_accuracy"] == 1.0 and m["rollout/base_tokens"] == 2.0
    base = models.load_model("tiny", seed=0).eval()  # the base weights, independently
    proj = part.projection(2 * model.config.hidden_size)
    for r, p in enumerate([0, 0, 1, 1]):
        want = manual_features(base, prompt_ids[p], [ord("x"), ord("9")], proj)
        torch.testing.assert_close(batch.extras[FEATURES][r], want, rtol=1e-4, atol=1e-4)
    want = manual_features(base, prompt_ids[1], [ord("7")], proj)
    torch.testing.assert_close(batch.extras[BASE_FEATURES][2], want, rtol=1e-4, atol=1e-4)
