"""T-PPO's extended GAE: advantages of truncated (unfinished) responses from a value bootstrap."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from anypo.advantages.outcome import ADVANTAGES
from anypo.advantages.token import token_level_rewards
from anypo.ops import last_token_index, masked_whiten
from anypo.types import PartConfig, RolloutBatch

__all__ = ["BOOTSTRAP_VALUES", "UNFINISHED", "EGAEAdvantage", "egae", "egae_advantages", "unfinished_rows"]

UNFINISHED = "unfinished"
"""Key of ``RolloutBatch.extras``: [N] bool, True for a response cut by a per-step generation window
that a later step continues (T-PPO's partial rollouts; set by the ``tppo_carry`` rollout part)."""


def unfinished_rows(batch: RolloutBatch, truncated_unfinished: bool) -> Tensor:
    """[N] bool: rows marked ``extras["unfinished"]``, and with ``truncated_unfinished`` also the rows the
    loop's length limit cut (``batch.truncated``)."""
    flag = batch.extras.get(UNFINISHED)
    out = torch.zeros(batch.num_seqs, dtype=torch.bool) if flag is None else torch.as_tensor(flag).bool()
    if truncated_unfinished and batch.truncated is not None:
        out = out | batch.truncated.bool()
    return out


BOOTSTRAP_VALUES = "bootstrap_values"
"""Key of ``RolloutBatch.extras``: [N] critic value of the state after each response's last token
(``V(s_l)``), filled by the online loop for a part that declares ``needs_bootstrap_values``."""


def egae_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, bootstrap: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """GAE over the response tokens with ``V`` after the last token equal to ``bootstrap`` (0 for a
    finished response), so an unfinished response's advantages are estimated from the critic.

    ``delta_t = r_t + gamma V_{t'} - V_t`` with ``V_{t'}`` the next response token's value, or
    ``bootstrap_i`` after the last one; ``A_t = delta_t + gamma lam A_{t'}``; returns ``A + V``.
    For a response truncated after ``l`` tokens: ``A_t = sum_{k=0}^{l-1-t} (gamma lam)^k delta_{t+k}``.

    Args:
        rewards: [N, T] per-token rewards (no outcome reward on an unfinished response).
        values: [N, T] ``V(s_t)`` before each response token.
        mask: [N, T] response mask.
        bootstrap: [N] value after the last token (0 where the response finished).
        gamma, lam: discount and GAE lambda.

    Returns:
        ``(advantages [N, T], returns [N, T])``, 0 off the mask.
    """
    on = mask != 0
    N, T = rewards.shape
    next_value = bootstrap.to(rewards.dtype).clone()  # [N] the value after the last response token
    next_adv = rewards.new_zeros(N)
    advs = []
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        next_adv = torch.where(on[:, t], a, next_adv)
        next_value = torch.where(on[:, t], values[:, t], next_value)
        advs.append(torch.where(on[:, t], a, torch.zeros_like(a)))
    adv = torch.stack(advs[::-1], dim=-1)
    return adv, torch.where(on, adv + values, torch.zeros_like(adv))


@dataclass(frozen=True)
class EGAEAdvantage(PartConfig):
    """T-PPO's extended generalized advantage estimation (reconstructed from the abstract).

    Paper: T. Fan et al. (ByteDance Seed), "Truncated Proximal Policy Optimization",
    https://arxiv.org/abs/2506.15050 (EGAE; equation not read). Only the abstract could be read and no
    code was found: T-PPO restricts each step's generation length, estimates advantages of the
    incomplete responses with EGAE, continues them in later steps, and optimises policy and value
    independently, filtering truncated tokens. Reconstruction (UNVERIFIED): GAE (Schulman et al.,
    https://arxiv.org/abs/1506.02438, Eq. 16) in which an unfinished response (cut by the step's
    generation window, to be continued later) gets no outcome reward and bootstraps with the value
    after its last token:

        delta_t = r_t + gamma V(s_{t+1}) - V(s_t),   V(s_l) = V_boot if truncated else 0
        A_t     = sum_k (gamma lam)^k delta_{t+k}            (lam = lam_actor)
        returns = GAE(lam_critic) + V                         (decoupled lambdas)

    Decoupled actor / critic lambdas follow the same team's VC-PPO ("What's Behind PPO's Collapse in
    Long-CoT? Value Optimization Holds the Secret", https://arxiv.org/abs/2503.01491: "the GAE
    computation is decoupled between the actor and critic"); ``lam_critic = 1`` makes the value target
    of a finished response its reward. Advantages are whitened over the batch (verl, as ``gae``).

    ``V_boot``: ``extras["bootstrap_values"]`` [N], the critic's value of the state after the last
    token, which the online loop fills from the critic's pass (``needs_bootstrap_values``); a batch
    without it (a hand-built one) uses the value before the last token ``V(s_{l-1})`` instead
    (``advantage/egae_bootstrap_standin`` logs 1): with gamma = 1 the last token's delta is then 0.

    Which responses are unfinished: ``extras["unfinished"]`` [N] bool, set by the rollout part that
    carries partial responses over to the next step's generation (:class:`anypo.rollout.TPPOCarryConfig`,
    T-PPO's length-restricted rollout, whose window is the run's ``max_new_tokens``). A continued
    response's already-trained prefix is masked, so its GAE runs over the continuation's tokens. Without
    that part every response is finished and EGAE is GAE with decoupled lambdas; a response cut by
    ``max_new_tokens`` is then final (scored, as T-PPO scores responses that hit the overall length
    limit), and ``truncated_unfinished=True`` treats those as unfinished instead (no reward, bootstrap).

    Also fills ``batch.returns`` (value targets), as ``gae``.

    Shapes: ``rewards`` [N], ``extras["unfinished"]`` / ``truncated`` [N] bool, ``values`` and ``response_mask``
    [N, T] -> advantages [N, T].
    """

    gamma: float = 1.0
    """Discount per response token."""
    lam_actor: float = 0.95
    """GAE lambda of the advantages (UNVERIFIED)."""
    lam_critic: float = 1.0
    """GAE lambda of the value targets (VC-PPO's decoupled GAE)."""
    kl_coef: float = 0.0
    """k1 KL(old || ref) penalty folded into the token rewards; 0 disables."""
    whiten: bool = True
    """Whiten the advantages over all response tokens of the batch."""
    truncated_unfinished: bool = False
    """Also treat responses cut by max_new_tokens (batch.truncated) as unfinished (bootstrap, no reward)."""

    def __post_init__(self) -> None:
        for name in ("gamma", "lam_actor", "lam_critic"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"EGAEAdvantage.{name} must be in [0, 1], got {v}")

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

    @property
    def needs_bootstrap_values(self) -> bool:
        """The critic's value after each response's last token, ``extras["bootstrap_values"]`` [N]."""
        return True


@ADVANTAGES.register("egae", config=EGAEAdvantage)
def egae(batch: RolloutBatch, cfg: EGAEAdvantage) -> Tensor:
    """EGAE advantages (see :class:`EGAEAdvantage`); sets ``batch.returns``.

    Args:
        batch: ``rewards``, ``response_mask``, ``values``; optional ``extras["unfinished"]``,
            ``truncated`` [N] and ``extras["bootstrap_values"]`` [N]; ``old_logprobs`` / ``ref_logprobs``
            when ``kl_coef``.
        cfg: discount, lambdas, KL coefficient, whitening.

    Returns:
        [N, T] advantages; logs ``egae_unfinished_frac`` and ``egae_bootstrap_standin``.
    """
    mask = batch.mask
    values = batch.require("values", "EGAE needs a critic: the loop runs it when needs_values").detach()
    values = torch.where(mask != 0, values.to(mask.dtype), torch.zeros_like(mask))
    N = batch.num_seqs
    trunc = unfinished_rows(batch, cfg.truncated_unfinished)  # [N] bool
    # an unfinished response has no outcome reward yet: only its token-level terms remain
    R = torch.where(trunc, torch.zeros_like(batch.rewards), batch.rewards)
    rewards = token_level_rewards(dataclasses.replace(batch, rewards=R), cfg.kl_coef)
    boot = batch.extras.get(BOOTSTRAP_VALUES)
    standin = boot is None
    if standin:  # V(s_{l-1}), the last value the critic gives, for V(s_l)
        last = last_token_index(mask).clamp_min(0)
        boot = values.gather(1, last[:, None]).squeeze(1)
    boot = torch.where(trunc, torch.as_tensor(boot, dtype=mask.dtype), torch.zeros(N, dtype=mask.dtype))
    adv, _ = egae_advantages(rewards, values, mask, boot, cfg.gamma, cfg.lam_actor)
    if cfg.lam_critic == cfg.lam_actor:
        returns = torch.where(mask != 0, adv + values, torch.zeros_like(adv))
    else:
        _, returns = egae_advantages(rewards, values, mask, boot, cfg.gamma, cfg.lam_critic)
    batch.returns = returns
    batch.add_metric("egae_unfinished_frac", trunc.to(mask.dtype).mean() if N else 0.0)
    batch.add_metric("egae_bootstrap_standin", float(standin and bool(trunc.any())))
    if cfg.whiten:
        adv = masked_whiten(adv, mask, unbiased=True) * mask
    return adv
