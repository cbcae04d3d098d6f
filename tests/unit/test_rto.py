"""RTO's token reward (anypo.rollout.rto) and its composition with the gae advantage: spec section 7's
vector, and the part's rewards against independent forwards of a DPO model and the reference."""

from __future__ import annotations

import pytest
import torch

from anypo.advantages import GAEAdvantage
from anypo.models import load_model
from anypo.policy import response_logprobs
from anypo.registry import get
from anypo.rollout.rto import RTOTokenReward, RTOTokenRewardConfig, rto_token_rewards
from anypo.types import RolloutBatch

LP_DPO = torch.tensor([[-1.0, -2.0, -0.5, -3.0]], dtype=torch.float64)
LP_REF = torch.tensor([[-1.2, -1.5, -0.9, -3.0]], dtype=torch.float64)
LP_PI = torch.tensor([[-1.1, -1.8, -0.6, -2.9]], dtype=torch.float64)


def test_spec_vector_through_gae():
    """Spec section 7: clip(0.05 (lp_dpo - lp_ref), +-0.05) = [0.01, -0.025, 0.02, 0]; minus 0.01 (lp_pi - lp_ref)
    and + 0.8 on the last token: r = [0.009, -0.022, 0.017, 0.799]; GAE (gamma 1, lambda 0.95) with
    V = [0.5, 0.6, 0.7, 0.8]: A = [0.287835, 0.188248, 0.11605, -0.001], returns A + V."""
    mask = torch.ones(1, 4)
    tok = rto_token_rewards(LP_DPO, LP_REF, mask, 0.05, 0.05)
    assert tok[0].tolist() == pytest.approx([0.01, -0.025, 0.02, 0.0], abs=1e-12)
    V = torch.tensor([[0.5, 0.6, 0.7, 0.8]], dtype=torch.float64)
    batch = RolloutBatch(
        response_mask=mask, group_ids=torch.tensor([0]), rewards=torch.tensor([0.8], dtype=torch.float64),
        old_logprobs=LP_PI, ref_logprobs=LP_REF, values=V, token_rewards=tok,
    )  # fmt: skip
    A = get("advantage", "gae")[0](batch, GAEAdvantage(gamma=1.0, lam=0.95, kl_coef=0.01, whiten=False))
    assert A[0].tolist() == pytest.approx([0.287835, 0.188248, 0.11605, -0.001], abs=1e-6)
    assert batch.returns[0].tolist() == pytest.approx([0.787835, 0.788248, 0.81605, 0.799], abs=1e-6)


def test_masked_tokens_get_no_reward():
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert rto_token_rewards(LP_DPO, LP_REF, mask, 0.05, 0.05)[0].tolist() == pytest.approx([0.01, -0.025, 0.0, 0.0])


class _Groups:
    """What the part uses of GroupRollout: the engine's model and collect()."""

    def __init__(self, model, batch):
        self.engine = type("E", (), {"model": model})()
        self.batch = batch

    def collect(self, requests, seed, group_offset=0):
        return self.batch


def _batch(N=3, P=4, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(N, T)
    mask[1, 3:] = 0  # a shorter response
    return RolloutBatch(
        response_mask=mask, group_ids=torch.tensor([0, 0, 1]), rewards=torch.zeros(N),
        prompt_ids=torch.randint(3, 50, (N, P), generator=g), prompt_mask=torch.ones(N, P, dtype=torch.long),
        response_ids=torch.randint(3, 50, (N, T), generator=g),
    )  # fmt: skip


def test_the_part_against_independent_forwards(tmp_path):
    """pi_ref = the policy when the part is built (tiny, seed 0); pi_dpo = its weights plus noise, saved as
    a Hugging Face directory. The part's token_rewards = clip(0.05 (lp_dpo - lp_ref), +-0.05) with both
    log-probs from plain padded forwards; later policy updates do not move the part's reference."""
    policy = load_model("tiny", seed=0)
    dpo = load_model("tiny", seed=0)
    with torch.no_grad():
        for p in dpo.parameters():
            p.add_(0.5 * torch.randn_like(p))
    dpo.save_pretrained(tmp_path / "dpo")
    batch = _batch()
    part = RTOTokenReward(RTOTokenRewardConfig(dpo_model=str(tmp_path / "dpo")), _Groups(policy, batch))
    with torch.no_grad():
        lp_ref = response_logprobs(policy, batch, 1.0, pack=False).logprobs
        lp_dpo = response_logprobs(dpo, batch, 1.0, pack=False).logprobs
        for p in policy.parameters():  # training moves the policy, not the part's reference copy
            p.add_(1.0)
    out = part.collect([], seed=0, step=1)
    expected = torch.where(batch.response_mask.bool(), (0.05 * (lp_dpo - lp_ref)).clamp(-0.05, 0.05), 0.0)
    assert torch.allclose(out.token_rewards, expected.to(out.token_rewards.dtype), atol=1e-6)
    assert (out.token_rewards.abs() > 0).any()
    m = part.pop_metrics()
    assert (
        set(m) == {"rollout/rto_dpo_reward_per_seq", "rollout/rto_clipped_frac"}
        and 0 <= m["rollout/rto_clipped_frac"] <= 1
    )


def test_without_a_dpo_model_the_reward_is_zero_and_configs_are_checked():
    policy = load_model("tiny", seed=0)
    part = RTOTokenReward(RTOTokenRewardConfig(), _Groups(policy, _batch()))
    assert torch.equal(part.collect([], 0, 1).token_rewards, torch.zeros(3, 5))
    for kw, word in (({"beta1": -1.0}, "beta1"), ({"clip": 0.0}, "clip"), ({"micro_batch_size": 0}, "micro_batch")):
        with pytest.raises(ValueError, match=word):
            RTOTokenRewardConfig(**kw)
    with pytest.raises(ValueError, match="ref-model"):
        RTOTokenReward(RTOTokenRewardConfig(), _Groups(None, _batch()))
