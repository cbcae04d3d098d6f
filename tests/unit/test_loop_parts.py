"""Parts that need something from the loop: ReMax's greedy-reward baseline, and the rollout
corrections (IcePop, sequence-level TIS) of the ratio losses. Expected values by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from anypo.advantages import ReMaxAdvantage, remax
from anypo.losses import PPOClip, Reinforce, ppo_clip, reinforce
from anypo.losses.common import RatioLossConfig, icepop, seq_tis, tis_weights
from anypo.registry import get, names
from anypo.types import PolicyOutput, RolloutBatch


def _remax_batch() -> RolloutBatch:
    """Group 7 (3 samples, greedy reward 0.5) and group 2 (2 samples, greedy reward failed: NaN)."""
    return RolloutBatch(
        response_mask=torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1]]),
        group_ids=torch.tensor([7, 7, 7, 2, 2]),
        rewards=torch.tensor([1.0, 0.0, 0.5, 0.2, 0.8], dtype=torch.float64),
        greedy_rewards=torch.tensor([0.5, 0.5, 0.5, float("nan"), float("nan")], dtype=torch.float64),
    )


def test_remax_advantage_by_hand():
    """A_i = R_i - R_greedy: group 7 gives 1 - 0.5 = 0.5, 0 - 0.5 = -0.5, 0.5 - 0.5 = 0 on every
    response token; group 2 has no greedy reward, so 0 (no baseline, no signal)."""
    A = remax(_remax_batch(), ReMaxAdvantage())
    want = torch.tensor(
        [[0.5, 0.5, 0.5], [-0.5, -0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64
    )
    assert A.dtype == torch.float64
    torch.testing.assert_close(A, want, rtol=0, atol=0)


def test_remax_discount_by_hand():
    """gamma = 0.5: A_it = 0.5^(response tokens after t) * A_i. Row 0 (3 tokens): 0.5 * [1/4, 1/2, 1]
    = [0.125, 0.25, 0.5]; row 1 (2 tokens, then padding): -0.5 * [1/2, 1, 0] = [-0.25, -0.5, 0];
    row 2 has a hole at t = 1, so t = 0 has one token after it: A_2 = 0 anyway, so take R_2 = 1.5:
    A_2 = 1, giving [0.5, 0, 1]."""
    b = _remax_batch()
    b.rewards = torch.tensor([1.0, 0.0, 1.5, 0.2, 0.8], dtype=torch.float64)
    A = remax(b, ReMaxAdvantage(gamma=0.5))
    torch.testing.assert_close(A[0], torch.tensor([0.125, 0.25, 0.5], dtype=torch.float64))
    torch.testing.assert_close(A[1], torch.tensor([-0.25, -0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(A[2], torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64))
    assert (A[3:] == 0).all()


def test_remax_config_and_needs():
    cfg = ReMaxAdvantage()
    assert cfg.needs_greedy_rewards and not cfg.group_relative and not cfg.needs_ref_logprobs
    with pytest.raises(ValueError, match="gamma must be in"):
        ReMaxAdvantage(gamma=0.0)
    b = _remax_batch()
    b.greedy_rewards = None
    with pytest.raises(ValueError, match="greedy_rewards is None"):
        remax(b, cfg)


def test_remax_reinforce_gradient_and_gradcheck():
    """With the preset's token-mean REINFORCE, dL/dlp_it = -A_it / N_tok with N_tok = 12 masked
    tokens: row 0 gets -0.5 / 12 per token, row 1 +0.5 / 12 on its 2 tokens; checked against
    torch.autograd.gradcheck in float64 too."""
    b = _remax_batch()
    b.advantages = remax(b, ReMaxAdvantage())
    lp = (torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) - 1).requires_grad_(True)
    reinforce(PolicyOutput(logprobs=lp), b, Reinforce(aggregation="token_mean")).loss.backward()
    want = -b.advantages / 12.0
    torch.testing.assert_close(lp.grad, want)
    torch.autograd.gradcheck(
        lambda x: reinforce(PolicyOutput(logprobs=x), b, Reinforce(aggregation="token_mean")).loss,
        (lp.detach().clone().requires_grad_(True),),
    )


# ---- rollout corrections: IcePop and sequence-level TIS -------------------------------------------


def _corr_batch() -> RolloutBatch:
    """Two rows; engine/learner log-ratios d = old - rollout chosen so the weights w = exp(d) are
    row 0: [1, 3, 0.4], row 1: [6, 0.5, pad]."""
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, 0.0]], dtype=torch.float64)
    d = torch.tensor([[0.0, math.log(3), math.log(0.4)], [math.log(6), math.log(0.5), 0.0]], dtype=torch.float64)
    return RolloutBatch(
        response_mask=mask, group_ids=torch.tensor([0, 0]), rewards=torch.tensor([1.0, 0.0], dtype=torch.float64),
        old_logprobs=old, rollout_logprobs=old - d,
        advantages=torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]], dtype=torch.float64),
    )  # fmt: skip


def test_icepop_weights_and_gradient_by_hand():
    """IcePop with [alpha, beta] = [0.5, 5]: M(w) = w inside, 0 outside, so the weights are
    [1, 3, 0 (0.4 < 0.5)] and [0 (6 > 5), 0.5 (on the bound: kept)]. On-policy (lp = old, r = 1) the
    clipped surrogate's gradient is -A r, so with token_mean over the 5 tokens
    dL/dlp = -A * M(w) / 5 = [-1, -3, 0] / 5 and [0, 0.5, 0] / 5; 2 of 5 tokens dropped."""
    b = _corr_batch()
    cfg = PPOClip(aggregation="token_mean", **icepop(alpha=0.5, beta=5.0))
    w, m = tis_weights(b, cfg, b.response_mask.to(torch.float64))
    torch.testing.assert_close(
        w * b.response_mask, torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.5, 0.0]], dtype=torch.float64)
    )
    assert m["tis/capped_frac"] == pytest.approx(1 / 5) and m["tis/floored_frac"] == pytest.approx(1 / 5)
    assert m["tis/weight_mean"] == pytest.approx((1 + 3 + 0.4 + 6 + 0.5) / 5)
    lp = b.old_logprobs.clone().requires_grad_(True)
    ppo_clip(PolicyOutput(logprobs=lp), b, cfg).loss.backward()
    want = torch.tensor([[-1.0, -3.0, 0.0], [0.0, 0.5, 0.0]], dtype=torch.float64) / 5
    torch.testing.assert_close(lp.grad, want)


def test_sequence_tis_by_hand():
    """Row 0: d = [0, ln 3, ln 0.4], geometric mean exp((ln 3 + ln 0.4) / 3) = 1.2^(1/3) = 1.0627,
    product 1.2; row 1: d = [ln 6, ln 0.5], geometric mean sqrt(3) = 1.7321, product 3.
    Band [0.5, 1.5]: geometric-mask keeps row 0 (weight 1.0627 on each token) and drops row 1;
    product-mask keeps row 0 (1.2) and drops row 1 (3); geometric-truncate clamps row 1 to 1.5."""
    b = _corr_batch()
    mask = b.response_mask.to(torch.float64)
    g = 1.2 ** (1 / 3)
    w, m = tis_weights(b, PPOClip(**seq_tis(0.5, 1.5)), mask)
    torch.testing.assert_close(w * mask, torch.tensor([[g, g, g], [0.0, 0.0, 0.0]], dtype=torch.float64))
    assert m["tis/capped_frac"] == pytest.approx(2 / 5) and m["tis/floored_frac"] == 0.0
    w, _ = tis_weights(b, PPOClip(**seq_tis(0.5, 1.5, level="sequence")), mask)
    torch.testing.assert_close(w * mask, torch.tensor([[1.2, 1.2, 1.2], [0.0, 0.0, 0.0]], dtype=torch.float64))
    w, _ = tis_weights(b, PPOClip(**seq_tis(0.5, 1.5, mode="truncate")), mask)
    torch.testing.assert_close(w * mask, torch.tensor([[g, g, g], [1.5, 1.5, 0.0]], dtype=torch.float64))


def test_correction_config_and_needs():
    assert PPOClip(**icepop()).needs_rollout_logprobs and not PPOClip().needs_rollout_logprobs
    assert icepop() == {"tis": "token", "tis_mode": "mask", "tis_floor": 0.5, "tis_cap": 5.0}
    with pytest.raises(ValueError, match="tis_floor must be in"):
        PPOClip(tis="token", tis_floor=3.0, tis_cap=2.0)
    with pytest.raises(ValueError, match="tis must be None"):
        PPOClip(tis="seq")
    with pytest.raises(ValueError, match="level must be"):
        seq_tis(level="token")


RATIO_LOSSES = [n for n in names("policy_loss") if issubclass(get("policy_loss", n)[1], RatioLossConfig)]


@pytest.mark.parametrize("name", RATIO_LOSSES)
def test_corrections_work_with_every_ratio_loss(name):
    """Every ratio loss takes the corrections. (a) Engine and learner agree (w = 1): IcePop changes
    neither loss nor gradient. (b) Sequence-masked TIS drops row 1 (geometric weight sqrt(3) > 1.5):
    loss and gradient equal those of the same batch with row 1's advantages set to 0 (a sequence that
    contributes nothing but still counts in the normaliser); row 0's engine log-probs are set equal
    to the learner's, so its weight is 1 on both sides."""
    fn, Cfg = get("policy_loss", name)
    b = _corr_batch()
    g = torch.Generator().manual_seed(3)
    lp0 = b.old_logprobs + 0.1 * torch.randn(2, 3, dtype=torch.float64, generator=g) * b.response_mask
    if Cfg().needs_minibatch_prepare:  # Clip-Cov / KL-Cov: one token selection, shared by every variant below
        Cfg().prepare_minibatch(b, lp0, seed=0)  # (dataclasses.replace keeps the same extras dict)

    def run(cfg, batch):
        lp = lp0.clone().requires_grad_(True)
        loss = fn(PolicyOutput(logprobs=lp), batch, cfg).loss
        loss.backward()
        return loss.detach(), lp.grad

    agree = dataclasses.replace(b, rollout_logprobs=b.old_logprobs.clone())
    plain = run(Cfg(), agree)
    torch.testing.assert_close(run(Cfg(**icepop()), agree), plain)

    # only row 1 leaves the band: put row 0's engine log-probs equal to the learner's (weight 1)
    roll = b.rollout_logprobs.clone()
    roll[0] = b.old_logprobs[0]
    masked = dataclasses.replace(b, rollout_logprobs=roll)
    zero_row1 = dataclasses.replace(b, rollout_logprobs=roll, advantages=b.advantages * torch.tensor([[1.0], [0.0]]))
    got = run(Cfg(**seq_tis(0.5, 1.5)), masked)
    want = run(Cfg(), zero_row1)
    assert (got[1][1] == 0).all()  # the masked sequence gets no gradient
    if name == "kl_cov":  # its |lp - old| penalty is masked with the sequence too, so zeroing A alone is
        return  # not the equivalent batch (row 1 keeps its penalty there); the zero gradient is the check
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("correction", [icepop(0.5, 5.0), seq_tis(0.5, 1.5, mode="truncate")])
def test_gradcheck_ppo_clip_with_corrections(correction):
    """float64 finite differences of the clipped surrogate times the (constant) correction weights."""
    b = _corr_batch()
    cfg = PPOClip(aggregation="seq_mean_token_mean", **correction)
    g = torch.Generator().manual_seed(5)
    lp = (b.old_logprobs + 0.05 * torch.randn(2, 3, dtype=torch.float64, generator=g)).requires_grad_(True)
    torch.autograd.gradcheck(lambda x: ppo_clip(PolicyOutput(logprobs=x), b, cfg).loss, (lp,))
