"""R2VPO (ratio-variance constraint with a dual variable), ARM / ProGRPO (confidence-reweighted
advantages), T-PPO's extended GAE and SAFE (soft-min critic, entropy-aware predictive KL controller).

Expected values come from the project spec ``shared/papers/rlvr-losses.md`` (sections 1, 4, 15,
16, 18), whose printed outputs are independent numpy computations, or from plain numpy / Python
re-computations written in the tests from the formulas in the docstrings (never from the code under
test). Gradients: float64 finite differences (``torch.autograd.gradcheck``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anypo.registry import get
from anypo.types import LossScale, PolicyOutput, RolloutBatch

# Shared toy batch of the spec (section 1): one prompt, G = 4, padded length 4.
MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=np.float64)
LP_OLD = np.array([[-1.0, -0.5, -2.0, 0], [-0.7, -1.2, 0, 0], [-0.3, -0.9, -1.5, -0.4], [-2.2, 0, 0, 0]])
LP = LP_OLD + np.array([[0.1, -0.05, 0.3, 0], [-0.25, 0.02, 0, 0], [0.05, 0.4, -0.1, 0.0], [-0.5, 0, 0, 0]])
R_TOY = np.array([1.0, 0.0, 1.0, 0.0])


def toy_batch(adv_seq: np.ndarray) -> tuple[RolloutBatch, torch.Tensor]:
    batch = RolloutBatch(
        response_mask=torch.tensor(MASK),
        group_ids=torch.zeros(4, dtype=torch.long),
        rewards=torch.tensor(R_TOY),
        old_logprobs=torch.tensor(LP_OLD),
        advantages=torch.tensor(adv_seq[:, None] * MASK),
    )
    return batch, torch.tensor(LP, requires_grad=True)


def grpo_adv(R: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    return (R - R.mean()) / (R.std(ddof=1) + eps)


# ---------------------------------------------------------------- R2VPO


def test_r2vpo_batch_centre_matches_the_spec_example():
    """Spec section 4's generic primal-dual form (its printed output, an independent numpy run):
    GRPO advantages of R = [1, 0, 1, 0], token ratio, Var = token mean of (r - mean r)^2 over the 10
    tokens, lambda 1, delta 0.01: Var = 0.0586826, loss = -0.423184; a dual step of 0.1 gives
    lambda 1.00487."""
    from anypo.losses.r2vpo import R2VPO, r2vpo, r2vpo_dual_step

    batch, lp = toy_batch(grpo_adv(R_TOY))
    cfg = R2VPO(center="batch", delta=0.01, lambda_init=1.0, dual_lr=0.1)
    out = r2vpo(PolicyOutput(logprobs=lp), batch, cfg)
    assert out.metrics["r2vpo/ratio_var"] == pytest.approx(0.0586826, rel=1e-5)
    assert out.loss.item() == pytest.approx(-0.423184, rel=1e-5)
    assert r2vpo_dual_step(1.0, out.metrics["r2vpo/ratio_var"], 0.01, 0.1) == pytest.approx(1.00487, rel=1e-5)
    assert cfg.needs_whole_minibatch and not R2VPO().needs_whole_minibatch


def test_r2vpo_centre_one_loss_and_gradient_by_numpy():
    """centre 1: L = sum(-A r m)/10 + lam * sum(((r-1)^2 - delta) m)/10 with lam = 0.5 from the part's
    state; dL/dlp = (-A r + lam * 2 (r - 1) r) m / 10 (chain rule through r = exp(lp - old))."""
    from anypo.losses.r2vpo import R2VPO, r2vpo

    A = grpo_adv(R_TOY)
    batch, lp = toy_batch(A)
    batch.part_state = {"lambda": 0.5}
    cfg = R2VPO(delta=0.02, lambda_init=3.0)  # the state's lambda wins over lambda_init
    out = r2vpo(PolicyOutput(logprobs=lp), batch, cfg)
    out.loss.backward()
    r = np.exp(LP - LP_OLD)
    n = MASK.sum()
    want = (-(A[:, None] * r) * MASK).sum() / n + 0.5 * ((((r - 1) ** 2) - 0.02) * MASK).sum() / n
    grad = (-(A[:, None] * r) + 0.5 * 2 * (r - 1) * r) * MASK / n
    assert out.loss.item() == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(lp.grad.numpy(), grad, rtol=1e-10, atol=1e-14)
    assert out.metrics["r2vpo/ratio_var"] == pytest.approx((((r - 1) ** 2) * MASK).sum() / n, rel=1e-12)
    assert out.metrics["r2vpo/lambda"] == 0.5


def test_r2vpo_on_policy_is_policy_gradient():
    """At r = 1 (lp = old) the variance term is -lambda delta and its gradient 2 (r - 1) r = 0: the
    gradient is the token-mean policy gradient -A m / N_tok."""
    from anypo.losses.r2vpo import R2VPO, r2vpo

    A = grpo_adv(R_TOY)
    batch, _ = toy_batch(A)
    lp = torch.tensor(LP_OLD, requires_grad=True)
    out = r2vpo(PolicyOutput(logprobs=lp), batch, R2VPO(delta=0.01, lambda_init=2.0))
    out.loss.backward()
    np.testing.assert_allclose(lp.grad.numpy(), -A[:, None] * MASK / MASK.sum(), atol=1e-15)
    assert out.metrics["r2vpo/ratio_var"] == 0.0


@pytest.mark.parametrize("center", ["one", "batch"])
def test_r2vpo_gradcheck(center):
    from anypo.losses.r2vpo import R2VPO, r2vpo

    batch, lp = toy_batch(grpo_adv(R_TOY))
    batch.part_state = {"lambda": 1.3}
    cfg = R2VPO(center=center, aggregation="seq_mean_token_mean")
    assert torch.autograd.gradcheck(lambda x: r2vpo(PolicyOutput(logprobs=x), batch, cfg).loss, (lp,))


def test_r2vpo_dual_state_across_steps():
    """Projected dual ascent on the logged variance: lam_{k+1} = max(0, lam_k + eta (Var_k - delta)).
    1.0 -> 1.0 + 2 (0.05 - 0.01) = 1.08 -> 1.08 + 2 (0 - 0.01) = 1.06; from 0.01 a step below the
    budget stays at 0 (projection)."""
    from anypo.losses.r2vpo import R2VPO

    cfg = R2VPO(delta=0.01, dual_lr=2.0, lambda_init=1.0)
    assert cfg.stateful and cfg.init_state() == {"lambda": 1.0}
    state = cfg.init_state()
    cfg.update_state(state, {"r2vpo/ratio_var": 0.05})
    assert state["lambda"] == pytest.approx(1.08)
    cfg.update_state(state, {"r2vpo/ratio_var": 0.0})
    assert state["lambda"] == pytest.approx(1.06)
    low = {"lambda": 0.01}
    cfg.update_state(low, {"r2vpo/ratio_var": 0.0})
    assert low["lambda"] == 0.0
    cfg.update_state(low, {"policy/loss": 1.0})  # no variance logged (an empty mini-batch): unchanged
    assert low["lambda"] == 0.0


def test_r2vpo_microbatches_sum_to_the_minibatch():
    """Rows {0, 2} and {1, 3} with the mini-batch's scale: losses and gradients add up (centre 1)."""
    from anypo.losses.r2vpo import R2VPO, r2vpo

    batch, lp = toy_batch(grpo_adv(R_TOY))
    cfg = R2VPO(aggregation="seq_mean_token_mean")
    whole = r2vpo(PolicyOutput(logprobs=lp), batch, cfg).loss
    (g_whole,) = torch.autograd.grad(whole, lp)
    scale = batch.scale()
    parts = []
    for idx in (torch.tensor([0, 2]), torch.tensor([1, 3])):
        micro = batch.select(idx, loss_scale=scale)
        parts.append(r2vpo(PolicyOutput(logprobs=lp[idx]), micro, cfg).loss)
    total = parts[0] + parts[1]
    (g_micro,) = torch.autograd.grad(total, lp)
    assert total.item() == pytest.approx(whole.item(), rel=1e-12)
    torch.testing.assert_close(g_micro, g_whole)


@pytest.mark.parametrize(
    ("kw", "field"), [({"delta": -1.0}, "delta"), ({"dual_lr": -0.1}, "dual_lr"), ({"center": "mean"}, "center")]
)
def test_r2vpo_bad_config(kw, field):
    from anypo.losses.r2vpo import R2VPO

    with pytest.raises(ValueError, match=f"R2VPO.{field}"):
        R2VPO(**kw)


def test_r2vpo_preset_trains_on_stale_rollouts():
    from anypo.algorithms import PRESETS

    a = PRESETS["r2vpo"].build()
    assert PRESETS["r2vpo"].status == "reconstructed"
    sched = a.replay_schedule()
    assert sched.active and sched.sync_interval == 4 and sched.max_staleness == 3
    assert set(a.stateful_parts()) == {"policy_loss"} and a.policy_loss.aggregation == "token_mean"
    assert not PRESETS["r2vpo"].build(sync_interval=1).replay_schedule().active


def _unused() -> None:  # keep imports used by later sections
    _ = (math, LossScale, get)
