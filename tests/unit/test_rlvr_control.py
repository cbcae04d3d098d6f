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


# ---------------------------------------------------------------- T-PPO / EGAE


def test_egae_matches_the_spec_truncated_example_and_plain_gae():
    """Spec section 15 (printed output of an independent numpy run): an unfinished response of 4
    tokens, V = [0.40, 0.45, 0.50, 0.55], V after the last token 0.60, no reward, gamma 1, lambda 0.95:
    A = [0.185494, 0.142625, 0.0975, 0.05]. A finished response (bootstrap 0) is plain GAE: spec
    section 2.6's example, token rewards [0, 0.01, -0.015, 1.005], V = [0.5, 0.6, 0.7, 0.8]:
    A = [0.456974, 0.375762, 0.27975, 0.205], returns = A + V."""
    from anypo.advantages.egae import egae_advantages

    rewards = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.01, -0.015, 1.005]], dtype=torch.float64)
    values = torch.tensor([[0.40, 0.45, 0.50, 0.55], [0.5, 0.6, 0.7, 0.8]], dtype=torch.float64)
    adv, ret = egae_advantages(rewards, values, torch.ones(2, 4), torch.tensor([0.60, 0.0]), 1.0, 0.95)
    np.testing.assert_allclose(adv[0].numpy(), [0.185494, 0.142625, 0.0975, 0.05], rtol=1e-5)
    np.testing.assert_allclose(adv[1].numpy(), [0.456974, 0.375762, 0.27975, 0.205], rtol=1e-5)
    torch.testing.assert_close(ret, adv + values)


def test_egae_part_unfinished_rows_bootstrap_and_drop_their_reward():
    """Row 0 is unfinished (extras), reward 1 ignored, bootstrap 0.6 from extras: the spec's truncated
    example. Row 1 finished with reward 1 (last token of 2), V = [0.2, 0.5], gamma 1, lambda_actor
    0.95: delta = [0.5 - 0.2, 1 - 0.5] = [0.3, 0.5], A = [0.3 + 0.95 * 0.5, 0.5] = [0.775, 0.5]; value
    targets with lambda_critic 1: the reward, 1, on both tokens (and for row 0: 0.6 on every token)."""
    from anypo.advantages.egae import EGAEAdvantage, egae

    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    batch = RolloutBatch(
        response_mask=mask,
        group_ids=torch.tensor([0, 1]),
        rewards=torch.tensor([1.0, 1.0], dtype=torch.float64),
        values=torch.tensor([[0.40, 0.45, 0.50, 0.55], [0.2, 0.5, 9.0, 9.0]], dtype=torch.float64),
        extras={
            "unfinished": torch.tensor([True, False]),
            "bootstrap_values": torch.tensor([0.6, 5.0], dtype=torch.float64),
        },
    )
    A = egae(batch, EGAEAdvantage(lam_actor=0.95, lam_critic=1.0, whiten=False))
    np.testing.assert_allclose(A[0].numpy(), [0.185494, 0.142625, 0.0975, 0.05], rtol=1e-5)
    np.testing.assert_allclose(A[1].numpy(), [0.775, 0.5, 0, 0], rtol=1e-12)
    np.testing.assert_allclose(batch.returns.numpy(), [[0.6] * 4, [1.0, 1.0, 0, 0]], rtol=1e-12)
    assert batch.part_metrics["egae_unfinished_frac"] == 0.5 and batch.part_metrics["egae_bootstrap_standin"] == 0.0


def test_egae_truncated_rows_and_the_bootstrap_standin():
    """With truncated_unfinished, a row cut by max_new_tokens is unfinished; without extras the value
    before its last token stands in for V(s_l): V = [0.4, 0.5], boot 0.5, no reward:
    delta = [0.1, 0], A = [0.1, 0]. Without truncated_unfinished the same row is finished and its
    reward 1 counts: delta = [0.1, 1 - 0.5], A = [0.1 + 0.5, 0.5] (lambda 1)."""
    from anypo.advantages.egae import EGAEAdvantage, egae

    def batch():
        return RolloutBatch(
            response_mask=torch.ones(1, 2),
            group_ids=torch.zeros(1, dtype=torch.long),
            rewards=torch.tensor([1.0], dtype=torch.float64),
            values=torch.tensor([[0.4, 0.5]], dtype=torch.float64),
            truncated=torch.tensor([True]),
        )

    b = batch()
    A = egae(b, EGAEAdvantage(lam_actor=1.0, whiten=False, truncated_unfinished=True))
    np.testing.assert_allclose(A[0].numpy(), [0.1, 0.0], atol=1e-12)
    assert b.part_metrics["egae_bootstrap_standin"] == 1.0
    A = egae(batch(), EGAEAdvantage(lam_actor=1.0, whiten=False))
    np.testing.assert_allclose(A[0].numpy(), [0.6, 0.5], atol=1e-12)
    with pytest.raises(ValueError, match="EGAEAdvantage.lam_actor"):
        EGAEAdvantage(lam_actor=1.5)


def test_tppo_value_loss_leaves_unfinished_rows_out():
    """Rows 0 (unfinished) and 1 (finished), 2 tokens each, clip 0.5: row 1's V = [1, 0.2], V_old 0,
    R = [2, 1] gives 0.5 max((V-R)^2, (clip V - R)^2) = [1.125, 0.32] (test_losses' hand example);
    row 0 contributes nothing but its tokens stay in the normaliser: (1.125 + 0.32) / 4 = 0.36125;
    gradient [0, -0.8 / 4] on row 1 and 0 on row 0."""
    from anypo.losses.critic import TPPOValueLoss, tppo_value

    batch = RolloutBatch(
        response_mask=torch.ones(2, 2),
        group_ids=torch.tensor([0, 1]),
        rewards=torch.zeros(2, dtype=torch.float64),
        values=torch.zeros(2, 2, dtype=torch.float64),
        returns=torch.tensor([[5.0, 5.0], [2.0, 1.0]], dtype=torch.float64),
        extras={"unfinished": torch.tensor([True, False])},
    )
    v = torch.tensor([[3.0, 3.0], [1.0, 0.2]], dtype=torch.float64, requires_grad=True)
    out = tppo_value(v, batch, TPPOValueLoss(cliprange=0.5))
    assert out.loss.item() == pytest.approx(0.36125)
    (g,) = torch.autograd.grad(out.loss, v)
    np.testing.assert_allclose(g.numpy(), [[0, 0], [0, -0.2]], atol=1e-12)
    assert out.metrics["value/trained_frac"] == 0.5
    assert torch.autograd.gradcheck(lambda x: tppo_value(x, batch, TPPOValueLoss(cliprange=5.0)).loss, (v,))


def test_tppo_preset():
    from anypo.algorithms import PRESETS

    a = PRESETS["tppo"].build()
    assert a.needs("values") and a.ppo_epochs == 2 and a.policy_loss.eps_high == 0.28
    assert (a.advantage.lam_actor, a.advantage.lam_critic, a.advantage.truncated_unfinished) == (0.95, 1.0, False)
    b = PRESETS["tppo"].build(truncated_unfinished=True)
    assert b.advantage.truncated_unfinished and b.value_loss.truncated_unfinished


# ---------------------------------------------------------------- SAFE


def test_safe_soft_min_and_controller_match_the_spec():
    """Spec section 18 (printed output of an independent numpy mirror of the official code):
    soft-min(alpha 0.3) of v1 = [0.2, 1.0], v2 = [0.5, 0.9] = [0.313966, 0.945852]; the controller on
    (KL, H, reward) = (2.0, 1.2, 0.50), (2.5, 1.2, 0.60), (3.0, 1.2, 0.55): kl_short 0.2 / 0.43 /
    0.687, threshold 0.45 / 0.45216 / 0.450435, penalty 0 / 0 / 0.00860969."""
    from anypo.losses.critic import soft_min
    from anypo.regularizers.safe import SAFEControl, safe_controller_step

    v = soft_min(torch.tensor([0.2, 1.0], dtype=torch.float64), torch.tensor([0.5, 0.9], dtype=torch.float64), 0.3)
    np.testing.assert_allclose(v.numpy(), [0.313966, 0.945852], rtol=1e-5)
    cfg = SAFEControl()
    state = cfg.init_state()
    want = [(0.2, 0.45, 0.0), (0.43, 0.45216, 0.0), (0.687, 0.450435, 0.00860969)]
    for (kl, H, rew), (ks, thr, pen) in zip([(2.0, 1.2, 0.50), (2.5, 1.2, 0.60), (3.0, 1.2, 0.55)], want, strict=True):
        got = safe_controller_step(state, kl, H, rew, cfg)
        assert state["kl_short"] == pytest.approx(ks, rel=1e-6)
        assert state["threshold"] == pytest.approx(thr, rel=1e-5)
        assert got == pytest.approx(pen, rel=1e-5, abs=1e-12)
    s2 = cfg.init_state()  # update_state reads the same three metrics
    for kl, H, rew in [(2.0, 1.2, 0.50), (2.5, 1.2, 0.60), (3.0, 1.2, 0.55)]:
        cfg.update_state(s2, {"safe/kl": kl, "safe/entropy": H, "safe/reward_mean": rew})
    assert s2["penalty"] == pytest.approx(0.00860969, rel=1e-5) and s2["history"] == [0.5, 0.6, 0.55]


def test_safe_phase_multiplier_by_hand():
    """< 50 rewards: 1.5; 100 rewards rising from 0 to 0.99: the last 50 average 0.745 > 0.245 + 0.01:
    1.2; 60 rewards all 0.8: recent mean 0.8 = old mean (the same 50 when < 100), std 0 < 0.02 and
    0.8 > 0.7: 1.0; 60 rewards all 0.5: 0.8."""
    from anypo.regularizers.safe import safe_phase_multiplier

    assert safe_phase_multiplier([0.1] * 49) == 1.5
    assert safe_phase_multiplier([i / 100 for i in range(100)]) == 1.2
    assert safe_phase_multiplier([0.8] * 60) == 1.0
    assert safe_phase_multiplier([0.5] * 60) == 0.8


def test_safe_advantage_by_hand():
    """Normaliser from count 1e-4, mean 0, var 1 with R = [1, 0, 1, 0]: batch mean 0.5, unbiased var
    1/3; tot = 4.0001, mean = 0.5 * 4 / 4.0001, var = (1e-4 + 4/3 + 0.25 * 1e-4 * 4 / 4.0001) / 4.0001.
    R^ = (R - mean) / (sqrt(var) + 1e-8); V (last response token's value) = [0.1, 0.3, -0.2, 0.0];
    A = R^ - V standardised with the unbiased std; returns = R^ on every response token."""
    from anypo.advantages.safe import SAFEAdvantage, safe

    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
    values = torch.tensor([[9.0, 0.1, 7.0], [9.0, 9.0, 0.3], [-0.2, 7.0, 7.0], [9.0, 0.0, 7.0]], dtype=torch.float64)
    batch = RolloutBatch(
        mask, torch.zeros(4, dtype=torch.long), torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    )
    batch.values = values
    batch.part_state = SAFEAdvantage().init_state()
    A = safe(batch, SAFEAdvantage())
    tot = 4.0001
    mean = 0.5 * 4 / tot
    var = (1e-4 * 1.0 + (1 / 3) * 4 + 0.25 * 1e-4 * 4 / tot) / tot
    r_hat = (np.array([1.0, 0.0, 1.0, 0.0]) - mean) / (math.sqrt(var) + 1e-8)
    a = r_hat - np.array([0.1, 0.3, -0.2, 0.0])
    a = (a - a.mean()) / (a.std(ddof=1) + 1e-8)
    np.testing.assert_allclose(A.numpy(), a[:, None] * mask.numpy(), rtol=1e-10)
    np.testing.assert_allclose(batch.returns.numpy(), r_hat[:, None] * mask.numpy(), rtol=1e-10)
    assert batch.part_state["count"] == pytest.approx(tot) and batch.part_state["mean"] == pytest.approx(mean)


def test_safe_value_loss_by_hand():
    """Two sequences, value at the last response token. Row 0: V = 1.0, V_old = 0.5, R^ = 0.2;
    clip 0.2: V_clip = 0.7; Huber_0.5(0.8) = 0.5 (0.8 - 0.25) = 0.275, Huber_0.5(0.5) = 0.125:
    0.5 (0.275 + 0.125) = 0.2. Row 1: V = 0.1, V_old = 0.0, R^ = 0.3: inside the clip, Huber(-0.2)
    twice = 0.02 each, 0.5 (0.04) = 0.02. coef 0.5, mean over 2 sequences: 0.5 * 0.22 / 2 = 0.055.
    dL/dV: row 0 only the unclipped branch moves: 0.5 * 0.5 * 0.5 (linear part, slope d) / 2 = 0.0625;
    row 1 both branches: 0.5 * 0.5 * 2 * (-0.2) / 2 = -0.05."""
    from anypo.losses.critic import SAFEValueLoss, safe_value

    mask = torch.tensor([[1, 1], [1, 0]])
    batch = RolloutBatch(
        mask,
        torch.tensor([0, 0]),
        torch.zeros(2, dtype=torch.float64),
        values=torch.tensor([[9.0, 0.5], [0.0, 9.0]], dtype=torch.float64),
        returns=torch.tensor([[0.2, 0.2], [0.3, 0.0]], dtype=torch.float64),
    )
    v = torch.tensor([[4.0, 1.0], [0.1, 4.0]], dtype=torch.float64, requires_grad=True)
    out = safe_value(v, batch, SAFEValueLoss())
    assert out.loss.item() == pytest.approx(0.055)
    (g,) = torch.autograd.grad(out.loss, v)
    np.testing.assert_allclose(g.numpy(), [[0, 0.0625], [-0.05, 0]], atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: safe_value(x, batch, SAFEValueLoss()).loss, (v,))


def _safe_batch():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -1.5, -1.0]], dtype=torch.float64)
    batch = RolloutBatch(mask, torch.tensor([0, 0]), torch.tensor([1.0, 0.0], dtype=torch.float64), ref_logprobs=ref)
    lp = (ref + torch.tensor([[3.0, 2.0, 0.0], [1.0, 2.5, 3.5]], dtype=torch.float64)).requires_grad_(True)
    ent = torch.tensor([[1.0, 1.5, 0.0], [0.5, 2.0, 1.0]], dtype=torch.float64, requires_grad=True)
    return batch, lp, ent


def test_safe_regularizer_code_form_has_only_the_entropy_gradient():
    """Token-mean k1 KL over 5 tokens: (3 + 2 + 1 + 2.5 + 3.5) / 5 = 2.4; entropy (1 + 1.5 + 0.5 + 2 + 1)
    / 5 = 1.2; mean reward 0.5. The code-form loss is -0.01 * 1.2 (the penalty has no gradient and is
    not in the loss); d/dH = -0.01 / 5 per token, d/dlp = 0."""
    from anypo.regularizers.safe import SAFEControl, safe

    batch, lp, ent = _safe_batch()
    out = safe(PolicyOutput(logprobs=lp, entropy=ent), batch, SAFEControl())
    assert out.metrics["safe/kl"] == pytest.approx(2.4) and out.metrics["safe/entropy"] == pytest.approx(1.2)
    assert out.metrics["safe/reward_mean"] == pytest.approx(0.5)
    assert out.loss.item() == pytest.approx(-0.012)
    out.loss.backward()
    assert lp.grad is None
    np.testing.assert_allclose(ent.grad.numpy(), -0.01 / 5 * batch.response_mask.numpy(), atol=1e-15)


def test_safe_regularizer_grad_form_by_hand_and_gradcheck():
    """grad form from a fresh state: kl_short = 0.1 * 2.4 = 0.24; the first PID call returns 0 and with
    < 50 rewards the threshold is clip(0.3 * 1.5) = 0.45 > 0.24: no penalty. With a state whose kl_short is 4.0:
    kl_short = 3.6 + 0.24 = 3.84 > 0.45, factor max(0.5, 2 / 1.3); penalty 0.1 (3.84 - 0.45)^2 factor;
    dPenalty/dlp = 0.2 (3.39) factor * 0.1 / 5 per token (k1's gradient 1 / 5 through the token mean)."""
    from anypo.regularizers.safe import SAFEControl, safe

    batch, lp, ent = _safe_batch()
    cfg = SAFEControl(penalty="grad")
    assert cfg.needs_whole_minibatch and not SAFEControl().needs_whole_minibatch
    out = safe(PolicyOutput(logprobs=lp, entropy=ent), batch, cfg)
    assert out.loss.item() == pytest.approx(-0.012)
    state = cfg.init_state()
    state["kl_short"] = 4.0
    batch.part_state = state
    out = safe(PolicyOutput(logprobs=lp, entropy=ent), batch, cfg)
    factor = max(0.5, 2.0 / 1.3)
    assert out.loss.item() == pytest.approx(-0.012 + 0.1 * 3.39**2 * factor)
    (g,) = torch.autograd.grad(out.loss, lp)
    np.testing.assert_allclose(g.numpy(), 0.2 * 3.39 * factor * 0.1 / 5 * batch.response_mask.numpy(), rtol=1e-10)
    assert state["kl_short"] == 4.0 and state["history"] == []  # the loss never changes the state
    # the entropy factor is a stop-gradient gate (the code's rollout entropy is a constant): check d/dlp
    assert torch.autograd.gradcheck(lambda x: safe(PolicyOutput(logprobs=x, entropy=ent), batch, cfg).loss, (lp,))


def test_safe_preset():
    from anypo.algorithms import PRESETS

    a = PRESETS["safe"].build()
    assert a.ppo_epochs == 2 and a.policy_loss.eps_low == 0.2 and a.value_loss.coef == 0.5
    assert set(a.stateful_parts()) == {"advantage", "regularizers.0"}
    assert a.needs("ref_logprobs") and a.needs("values") and not a.needs("whole_minibatch")
    assert PRESETS["safe"].build(penalty="grad").needs("whole_minibatch")


def _unused() -> None:  # keep imports used by later sections
    _ = (math, LossScale, get)
