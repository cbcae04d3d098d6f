"""Token-level advantage estimators: REINFORCE++ (discounted returns) and GAE (critic).

Both build per-token rewards ``r_t`` from the outcome reward on the last response token, optional
``token_rewards``, and an optional KL-in-reward penalty
``-kl_coef * (old_logprobs - ref_logprobs)`` (k1 between the behaviour and reference policies, as
verl's ``apply_kl_penalty``).

How GAE's value targets flow: the advantage signature returns only advantages, so ``gae`` also
stores the value targets in ``batch.returns`` (documented side effect, the one place the batch is
written). The loop never has to know which advantage part produced them; the ``clipped`` value loss
reads ``batch.returns``. The pure functions :func:`gae_advantages_returns` and
:func:`discounted_returns` are exposed for tests and other loops.

Masks with holes (tool-output tokens inside a response) are handled by skipping masked positions:
the recursions run over response tokens only, so a reward after a tool call reaches the tokens
before it. (verl resets the running return at masked positions; both agree on right-padded masks.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from anypo.advantages.outcome import ADVANTAGES
from anypo.ops import last_token_index, masked_whiten
from anypo.types import PartConfig, RolloutBatch

__all__ = [
    "GAEAdvantage",
    "ReinforcePPAdvantage",
    "discounted_returns",
    "gae",
    "gae_advantages_returns",
    "reinforce_pp",
    "token_level_rewards",
]

_OLD_HINT = "the rollout engine (or a forward pass before the update) must fill old_logprobs"
_REF_HINT = "a part declares needs_ref_logprobs; the loop must run the reference model"


def token_level_rewards(batch: RolloutBatch, kl_coef: float) -> Tensor:
    """Per-token rewards: outcome on the last response token, token rewards, KL-in-reward.

    ``r_it = m_it * (token_rewards_it - kl_coef * (old_it - ref_it)) + R_i * 1[t = last_i]``.

    Args:
        batch: ``rewards [N]``, ``response_mask [N, T]``; ``old_logprobs`` and ``ref_logprobs``
            [N, T] when ``kl_coef != 0``; optional ``token_rewards [N, T]``.
        kl_coef: coefficient of the k1 penalty folded into the reward (0 disables it).

    Returns:
        [N, T] rewards in the dtype of ``rewards``, 0 off the mask.
    """
    mask = batch.mask  # [N, T]
    rew = torch.zeros_like(mask)
    if batch.token_rewards is not None:
        rew = rew + batch.token_rewards.to(rew.dtype)
    if kl_coef != 0:
        old = batch.require("old_logprobs", _OLD_HINT).to(rew.dtype)
        ref = batch.require("ref_logprobs", _REF_HINT).to(rew.dtype)
        rew = rew - kl_coef * (old - ref)
    rew = torch.where(mask != 0, rew, torch.zeros_like(rew)) * mask
    last = last_token_index(mask)  # [N], -1 for an empty response
    has_token = (last >= 0).to(rew.dtype)
    onehot = torch.nn.functional.one_hot(last.clamp_min(0), mask.shape[-1]).to(rew.dtype)  # [N, T]
    return rew + onehot * (batch.rewards * has_token).unsqueeze(-1)


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """``G_t = r_t + gamma * G_{t'}`` with ``t'`` the next response token; 0 off the mask.

    Args:
        rewards: [N, T] per-token rewards.
        mask: [N, T] response mask.
        gamma: discount per response token.

    Returns:
        [N, T] returns.
    """
    on = mask != 0
    run = rewards.new_zeros(rewards.shape[0])  # [N] return from the next response token
    out = []
    for t in reversed(range(rewards.shape[-1])):
        g = rewards[:, t] + gamma * run
        run = torch.where(on[:, t], g, run)  # masked positions pass the return through unchanged
        out.append(torch.where(on[:, t], g, torch.zeros_like(g)))
    return torch.stack(out[::-1], dim=-1)


def gae_advantages_returns(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over the response tokens.

    ``delta_t = r_t + gamma * V_{t'} - V_t`` (``V = 0`` after the last token),
    ``A_t = delta_t + gamma * lam * A_{t'}``, ``returns_t = A_t + V_t``, where ``t'`` is the next
    response token (Schulman et al., https://arxiv.org/abs/1506.02438, Eq. 16).

    Args:
        rewards: [N, T] per-token rewards.
        values: [N, T] critic values ``V(s_t)``.
        mask: [N, T] response mask.
        gamma: discount.
        lam: GAE lambda.

    Returns:
        ``(advantages [N, T], returns [N, T])``, both 0 off the mask.
    """
    on = mask != 0
    N, T = rewards.shape
    next_value = rewards.new_zeros(N)
    next_adv = rewards.new_zeros(N)
    advs = []
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        next_adv = torch.where(on[:, t], a, next_adv)
        next_value = torch.where(on[:, t], values[:, t], next_value)
        advs.append(torch.where(on[:, t], a, torch.zeros_like(a)))
    adv = torch.stack(advs[::-1], dim=-1)  # [N, T]
    returns = torch.where(on, adv + values, torch.zeros_like(adv))
    return adv, returns


@dataclass(frozen=True)
class ReinforcePPAdvantage(PartConfig):
    """REINFORCE++ advantage: discounted token returns, whitened over the batch.

    Paper: "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models",
    https://arxiv.org/abs/2501.03262, Sec. 3 (token-level KL penalty in the reward, global
    advantage normalisation). Token rewards ``r_t = -kl_coef * (old_t - ref_t) + R * 1[t = last]``,
    returns ``G_t = sum_{s >= t} gamma^(s-t) r_s``, ``A = (G - mu) / sqrt(var + eps)`` with the
    mean and unbiased variance over all response tokens of the batch (verl
    ``compute_reinforce_plus_plus_outcome_advantage``). Default ``kl_coef`` 0.01 is OpenRLHF's
    example ``init_kl_coef`` (verl's ``kl_ctrl.kl_coef`` default is 0.001).
    """

    kl_coef: float = 0.01
    """Coefficient of the k1 KL(old || ref) penalty folded into the token rewards."""
    gamma: float = 1.0
    """Discount per response token."""
    eps: float = 1e-8
    """Added to the variance of the global whitening."""

    @property
    def needs_ref_logprobs(self) -> bool:
        return self.kl_coef != 0

    @property
    def needs_old_logprobs_before_update(self) -> bool:
        """The KL-in-reward term reads ``old_logprobs`` in the advantages."""
        return self.kl_coef != 0


@ADVANTAGES.register("reinforce_pp", config=ReinforcePPAdvantage)
def reinforce_pp(batch: RolloutBatch, cfg: ReinforcePPAdvantage) -> Tensor:
    """REINFORCE++: ``A = whiten_batch(discounted_returns(token_rewards)) * m``.

    Args:
        batch: ``rewards [N]``, ``response_mask [N, T]``; ``old_logprobs``/``ref_logprobs``
            [N, T] when ``kl_coef != 0``.
        cfg: KL coefficient, discount, whitening epsilon.

    Returns:
        [N, T] advantages in the dtype of ``rewards``.
    """
    mask = batch.mask
    returns = discounted_returns(token_level_rewards(batch, cfg.kl_coef), mask, cfg.gamma)
    return masked_whiten(returns, mask, unbiased=True, eps=cfg.eps) * mask


@dataclass(frozen=True)
class GAEAdvantage(PartConfig):
    """PPO's generalized advantage estimation with a critic; also fills ``batch.returns``.

    Papers: "Proximal Policy Optimization Algorithms", https://arxiv.org/abs/1707.06347 (Eq. 11-12),
    and "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
    https://arxiv.org/abs/1506.02438 (Eq. 16). For language models the per-token reward is the
    KL-in-reward penalty plus the outcome reward on the last token (Ouyang et al. 2022; verl
    ``compute_gae_advantage_return``). Advantages are whitened over the batch when ``whiten`` (verl
    does); value targets ``returns = A + V`` use the raw advantages. Defaults ``gamma=1, lam=0.95``:
    verl uses ``lam=1``, OpenRLHF/TRL 0.95.
    """

    gamma: float = 1.0
    """Discount per response token."""
    lam: float = 0.95
    """GAE lambda (bias/variance trade-off)."""
    kl_coef: float = 0.0
    """Coefficient of the k1 KL(old || ref) penalty folded into the token rewards; 0 disables."""
    whiten: bool = True
    """Whiten the advantages over all response tokens of the batch (unbiased variance)."""

    @property
    def needs_values(self) -> bool:
        return True

    @property
    def needs_ref_logprobs(self) -> bool:
        return self.kl_coef != 0

    @property
    def needs_old_logprobs_before_update(self) -> bool:
        """The KL-in-reward term reads ``old_logprobs`` in the advantages."""
        return self.kl_coef != 0


@ADVANTAGES.register("gae", config=GAEAdvantage)
def gae(batch: RolloutBatch, cfg: GAEAdvantage) -> Tensor:
    """GAE advantages from ``batch.values``; sets ``batch.returns`` (value targets) as a side effect.

    Args:
        batch: ``rewards [N]``, ``response_mask [N, T]``, ``values [N, T]``; ``old_logprobs`` and
            ``ref_logprobs`` when ``kl_coef != 0``.
        cfg: discount, lambda, KL coefficient, whitening.

    Returns:
        [N, T] advantages in the dtype of ``rewards`` (``batch.returns`` [N, T] is set too).
    """
    mask = batch.mask
    values = batch.require("values", "GAE needs a critic: the loop runs it when needs_values").detach()
    rewards = token_level_rewards(batch, cfg.kl_coef)
    adv, returns = gae_advantages_returns(rewards, values.to(rewards.dtype), mask, cfg.gamma, cfg.lam)
    batch.returns = returns
    if cfg.whiten:
        adv = masked_whiten(adv, mask, unbiased=True) * mask
    return adv
