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


# ---------------------------------------------------------------- ARM / ProGRPO


def arm_batch(R, prompt_lp, old_rows, group_ids=None, correct=None) -> RolloutBatch:
    old = torch.tensor(old_rows, dtype=torch.float64)
    mask = torch.isfinite(old).long()
    extras = {"old_prompt_mean_logprobs": torch.tensor(prompt_lp, dtype=torch.float64)}
    if correct is not None:
        extras["correct"] = list(correct)
    n = len(R)
    return RolloutBatch(
        response_mask=mask,
        group_ids=torch.zeros(n, dtype=torch.long) if group_ids is None else torch.tensor(group_ids),
        rewards=torch.tensor(R, dtype=torch.float64),
        old_logprobs=torch.where(mask != 0, old, torch.full_like(old, float("-inf"))),  # garbage off the mask
        extras=extras,
    )


def test_arm_matches_the_spec_example():
    """Spec section 16 (its printed output, an independent numpy run): R = [1, 1, 0, 0], prompt token
    log-probs [-1.2, -0.8, -2.0, -0.5] (mean -1.125, c(q) = 0.324652), answers with mean log-probs
    [-0.05, -0.60, -0.30, -0.90], alpha 0.5, low_frac 1 (every answer token):
    A~ = [0.552735, 0.753944, -1.07411, -0.906982]. Each answer here is 2 tokens of equal log-prob."""
    from anypo.advantages.arm import ARMAdvantage, arm

    means = [-0.05, -0.60, -0.30, -0.90]
    batch = arm_batch([1.0, 1.0, 0.0, 0.0], [-1.125] * 4, [[m, m] for m in means])
    A = arm(batch, ARMAdvantage(alpha=0.5, low_frac=1.0))
    np.testing.assert_allclose(A[:, 0].numpy(), [0.552735, 0.753944, -1.07411, -0.906982], rtol=1e-5)
    torch.testing.assert_close(A[:, 1], A[:, 0])
    assert batch.part_metrics["arm/prompt_conf"] == pytest.approx(0.324652, rel=1e-5)
    assert batch.part_metrics["arm/shifted_frac"] == 1.0


def test_arm_low_probability_share_and_all_wrong_groups():
    """Group 0 (one right answer): low_frac 0.2 of a 6-token answer keeps ceil(1.2) = 2 tokens, the two
    lowest log-probs -3 and -1: c(o) = exp(-2); a 3-token answer keeps ceil(0.6) = 1 token: exp(-4).
    c(q) = exp(-1). GRPO: R = [1, 0], mean 0.5, std 0.70711: A = +-0.70711 (/(std + 1e-6)).
    A~ = A + 0.3 (exp(-1) - c(o)). Group 1 (all wrong on correctness although the reward has a 0.1
    format term): no shift, A = GRPO's = (0.1 - 0.05) / 0.070711 = +-0.70710 (+ eps)."""
    from anypo.advantages.arm import ARMAdvantage, arm

    nan = float("nan")
    rows = [
        [-0.1, -3.0, -0.2, -1.0, -0.5, -0.3],
        [-4.0, -0.1, -0.2, nan, nan, nan],
        [-1.0, -1.0, nan, nan, nan, nan],
        [-2.0, nan, nan, nan, nan, nan],
    ]
    batch = arm_batch(
        [1.0, 0.0, 0.1, 0.0], [-1.0, -1.0, -0.2, -0.2], rows, group_ids=[0, 0, 1, 1], correct=[1, 0, 0, 0]
    )
    A = arm(batch, ARMAdvantage(alpha=0.3, low_frac=0.2))
    g0 = 1 / (math.sqrt(0.5) + 1e-6)
    g1 = 0.05 / (math.sqrt(0.005) + 1e-6)
    want = [
        g0 * 0.5 + 0.3 * (math.exp(-1) - math.exp(-2)),
        -g0 * 0.5 + 0.3 * (math.exp(-1) - math.exp(-4)),
        g1,
        -g1,
    ]
    np.testing.assert_allclose(A[:, 0].numpy(), want, rtol=1e-10)
    assert (A[batch.response_mask == 0] == 0).all()
    assert batch.part_metrics["arm/shifted_frac"] == 0.5


def test_arm_needs_the_prompt_logprobs_and_checks_its_config():
    from anypo.advantages.arm import ARMAdvantage, arm

    batch = arm_batch([1.0, 0.0], [-1.0, -1.0], [[-1.0], [-2.0]])
    del batch.extras["old_prompt_mean_logprobs"]
    with pytest.raises(ValueError, match="needs_old_prompt_logprobs"):
        arm(batch, ARMAdvantage())
    with pytest.raises(ValueError, match="ARMAdvantage.low_frac"):
        ARMAdvantage(low_frac=0.0)
    assert ARMAdvantage().needs_old_prompt_logprobs and ARMAdvantage().group_relative


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_prompt_mean_logprobs_against_a_plain_forward(tiny_model, tokenizer, temperature):
    """For each row, a plain forward of its unpadded prompt q (P tokens): mean over k = 1..P-1 of
    log_softmax(z_{k-1} / t)[q_k]; rows of one prompt share the value; a one-token prompt gives 0.
    The behaviour pass returns it under its key when the request asks for it (and only then), next to
    the sampled tokens' log-probs."""
    from anypo.rollout.groups import left_pad
    from anypo.rollout.old_pass import OldPassRequest, behaviour_pass, prompt_mean_logprobs

    prompts = [[5, 6, 7, 8], [9, 10], [11]]
    pid, pm = left_pad(prompts, tokenizer.pad_token_id)
    pid, pm = pid.repeat_interleave(2, 0), pm.repeat_interleave(2, 0)
    b = RolloutBatch(
        response_mask=torch.ones(6, 2, dtype=torch.long),
        group_ids=torch.arange(3).repeat_interleave(2),
        rewards=torch.zeros(6),
        prompt_ids=pid,
        prompt_mask=pm,
        response_ids=torch.randint(20, 500, (6, 2), generator=torch.Generator().manual_seed(0)),
    )
    got = prompt_mean_logprobs(tiny_model, b, temperature)
    want = []
    for q in prompts:
        if len(q) < 2:
            want.append(0.0)
            continue
        with torch.no_grad():
            z = tiny_model(torch.tensor([q])).logits[0].double() / temperature
        lps = [float(torch.log_softmax(z[k - 1], -1)[q[k]]) for k in range(1, len(q))]
        want.append(sum(lps) / len(lps))
    np.testing.assert_allclose(got.numpy(), np.repeat(want, 2), rtol=1e-5, atol=1e-6)
    out = behaviour_pass(tiny_model, b, temperature, 2, True, OldPassRequest(logprobs=True, prompt_logprobs=True))
    assert set(out) == {"logprobs", "old_prompt_mean_logprobs"}
    torch.testing.assert_close(out["old_prompt_mean_logprobs"], got)
    assert "old_prompt_mean_logprobs" not in behaviour_pass(
        tiny_model, b, temperature, 2, True, OldPassRequest(logprobs=True)
    )


def test_arm_need_is_requested_from_the_behaviour_pass_and_accepted_by_the_config_check():
    from anypo.algorithms import PRESETS
    from anypo.config import TrainConfig
    from anypo.rollout.old_pass import old_pass_request
    from anypo.validate import train_config_problems

    algo = PRESETS["arm"].build()
    assert old_pass_request(algo, {}, logprobs=False).prompt_logprobs
    assert not old_pass_request(PRESETS["grpo"].build(), {}, logprobs=False).prompt_logprobs
    assert train_config_problems(TrainConfig(algo=algo)) == []
    assert PRESETS["arm"].status == "reconstructed"


def _unused() -> None:  # keep imports used by later sections
    _ = (math, LossScale, get)
