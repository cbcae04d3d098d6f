"""Parts that need something from the loop: ReMax's greedy-reward baseline, and the rollout
corrections (IcePop, sequence-level TIS) of the ratio losses. Expected values by hand."""

from __future__ import annotations

import pytest
import torch

from anypo.advantages import ReMaxAdvantage, remax
from anypo.losses import Reinforce, reinforce
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
