"""Correlated Proxies / ORPO: chi-squared occupancy-measure regularisation against reward hacking.

A discriminator ``d(s, a)`` between the policy's and the base policy's (prefix, token) pairs estimates
``log mu_pi / mu_base``; its ``e^d - 1`` per token, divided by the square root of its trimmed mean and
scaled, is a penalty added to the reward before GRPO's group normalisation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from anypo.advantages.outcome import ADVANTAGES, GRPOAdvantage, grpo
from anypo.types import PartConfig, RolloutBatch

__all__ = [
    "Chi2Occupancy",
    "chi2_occupancy",
    "chi2_penalty",
    "discriminator_logits",
    "discriminator_loss",
    "init_discriminator",
    "trimmed_chi2",
]

# extras keys written by the base_rollouts rollout part (anypo.rollout.base_samples)
_FEATURES, _BASE_FEATURES, _BASE_REWARDS = "chi2_features", "chi2_base_features", "chi2_base_rewards"


@dataclass(frozen=True)
class Chi2Occupancy(PartConfig):
    """ORPO's chi-squared occupancy-measure penalty, with its discriminator, as reward shaping before GRPO.

    Paper: "Correlated Proxies: A New Definition and Improved Mitigation for Reward Hacking",
    https://arxiv.org/abs/2403.03185 (objective ``J(pi, R~) - lambda sqrt(chi2(mu_pi || mu_base))``, with
    ``lambda`` proportional to the proxy's std under the base policy; implemented by reward shaping
    with a discriminator). The penalty and the discriminator's loss follow the official code,
    github.com/cassidylaidlaw/orpo ``occupancy_measures/agents/orpo.py`` (``_kl_discriminator_loss``,
    ``_chi2_discriminator_rewards``, ``_sqrt_chi2_discriminator_rewards``,
    ``augment_reward_with_discriminator_and_transfer_action_dist_inputs``; divergence ``sqrt_chi2``):

        L_disc = mean_{(s,a)~pi} softplus(-d) + mean_{(s,a)~base} softplus(d)    (optimum d = log mu_pi/mu_base)
        c_t    = exp(d(s_t, a_t)) - 1 on the policy's tokens (no gradient)      E_pi[c] = chi2(mu_pi || mu_base)
        chi2^  = mean of c without its i lowest and i highest values, i = max(1, int(trim n))
        dist_t = c_t / sqrt(chi2^) if chi2^ > 0 else c_t;   0 where not finite
        p_t    = clip(-lambda dist_t, -reward_clip, reward_clip),   lambda = coef * std(base rewards)
        R'_i   = R_i + sum_t p_it m_it;   A = GRPO(R')  (group z-score, as ``grpo``)

    The discriminator is trained first (the code's ``train_discriminator_first``), then scores the
    step's policy tokens.

    **Reconstructed** (status of the preset: reconstructed): the paper's LLM (RLHF) code was not found
    (only the KL-in-reward path of github.com/cassidylaidlaw/llm_optimization), so these are this
    library's choices: a state is the prompt and response prefix and an action the next token, with
    the features of the ``base_rollouts`` rollout part; the discriminator is a 2-layer MLP (``hidden``
    ReLU units) trained ``disc_steps`` Adam steps per training step on this step's policy and base
    tokens (at most ``disc_max_tokens`` of each, a seeded random subset); the per-token penalties are
    summed into the outcome reward before GRPO (the code shapes per-step rewards for PPO with GAE); the
    base rewards' std is a running estimate over every base sample seen (the code's README multiplies
    the coefficient by the base policy's reward std, a constant per environment). The code's trimmed
    mean uses ``i = int(0.01 n)``, which is 0 below 100 tokens, gives NaN and silently no penalty: here
    ``i >= 1`` (the plain mean below 3 tokens).

    **Inputs** (from the ``base_rollouts`` rollout part, which the ``orpo_proxy`` preset uses):
    ``extras["chi2_features"]`` and ``extras["chi2_base_features"]`` (per row, [L_i, k]) and
    ``extras["chi2_base_rewards"]`` (per row). **State** (``stateful``, in checkpoints): the
    discriminator's weights and Adam moments (created at the first step from the feature size), the
    running count / mean / M2 of the base rewards, and the number of discriminator updates.

    Shapes: ``rewards`` [N], ``group_ids`` [N], ``response_mask`` [N, T] -> [N, T].
    """

    coef: float = 0.05
    """The penalty's coefficient (the code's sqrt_chi2 sweep: 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)."""
    scale_by_base_std: bool = True
    """lambda = coef * running std of the base policy's rewards; False: lambda = coef."""
    reward_clip: float = 0.0
    """Clip of each token's penalty to [-clip, clip] (discriminator_reward_clip); 0: no clip (the code's inf)."""
    trim: float = 0.01
    """Share of the penalties trimmed at each end of the chi2 estimate (the code: 1%)."""
    hidden: int = 64
    """Hidden units of the discriminator."""
    disc_lr: float = 1e-3
    """Adam learning rate of the discriminator."""
    disc_steps: int = 20
    """Full-batch discriminator updates per training step (0: never trained)."""
    disc_max_tokens: int = 16384
    """At most this many policy and this many base tokens per discriminator update (seeded subset)."""
    seed: int = 0
    """Seed of the discriminator's initial weights and token subsets."""
    scale: str = "group"
    """GRPO's normalisation of the shaped rewards (``GRPOAdvantage.scale``)."""

    def __post_init__(self) -> None:
        if self.coef < 0:
            raise ValueError(f"Chi2Occupancy.coef must be >= 0, got {self.coef}")
        if not self.reward_clip >= 0:
            raise ValueError(f"Chi2Occupancy.reward_clip must be >= 0 (0: no clip), got {self.reward_clip}")
        if not 0 <= self.trim < 0.5:
            raise ValueError(f"Chi2Occupancy.trim must be in [0, 0.5), got {self.trim}")
        for f in ("hidden", "disc_max_tokens"):
            if getattr(self, f) < 1:
                raise ValueError(f"Chi2Occupancy.{f} must be >= 1, got {getattr(self, f)}")
        if self.disc_steps < 0:
            raise ValueError(f"Chi2Occupancy.disc_steps must be >= 0, got {self.disc_steps}")
        if not self.disc_lr > 0:
            raise ValueError(f"Chi2Occupancy.disc_lr must be positive, got {self.disc_lr}")
        GRPOAdvantage(scale=self.scale)  # checks the scale

    @property
    def group_relative(self) -> bool:
        return True

    @property
    def uses_base_samples(self) -> bool:
        """Reads the base_rollouts rollout part's extras (features of the policy's and the base samples)."""
        return True

    @property
    def stateful(self) -> bool:
        """The discriminator (weights, Adam moments) and the base-reward statistics persist, in checkpoints."""
        return True

    def init_state(self) -> dict[str, Any]:
        return {"disc": None, "updates": 0, "base_count": 0, "base_mean": 0.0, "base_m2": 0.0}


def init_discriminator(k: int, hidden: int, seed: int) -> dict[str, Any]:
    """A fresh discriminator for k features and its zero Adam moments: ``{"w1" [k, h], "b1" [h], "w2" [h],
    "b2" [], "m": {...}, "v": {...}, "t": 0}`` (w ~ N(0, 1 / fan_in), biases 0)."""
    g = torch.Generator().manual_seed(int(seed) * 7_919 + 1)
    w = {
        "w1": torch.randn(k, hidden, generator=g) / math.sqrt(k),
        "b1": torch.zeros(hidden),
        "w2": torch.randn(hidden, generator=g) / math.sqrt(hidden),
        "b2": torch.zeros(()),
    }
    return w | {
        "m": {n: torch.zeros_like(t) for n, t in w.items()},
        "v": {n: torch.zeros_like(t) for n, t in w.items()},
        "t": 0,
    }


def discriminator_logits(disc: dict[str, Any], x: Tensor) -> Tensor:
    """[n] ``d(x) = relu(x W1 + b1) . w2 + b2`` for features ``x`` [n, k]."""
    return torch.relu(x @ disc["w1"] + disc["b1"]) @ disc["w2"] + disc["b2"]


def discriminator_loss(d_policy: Tensor, d_base: Tensor) -> Tensor:
    """``mean softplus(-d_policy) + mean softplus(d_base)`` (the code's logistic discriminator loss;
    an empty set contributes nothing)."""
    loss = d_policy.new_zeros(())
    if d_policy.numel():
        loss = loss + F.softplus(-d_policy).mean()
    if d_base.numel():
        loss = loss + F.softplus(d_base).mean()
    return loss


def trimmed_chi2(c: Tensor, trim: float) -> float:
    """The mean of ``c`` [n] without its ``i = max(1, int(trim n))`` lowest and ``i`` highest values
    (at most ``(n - 1) // 2``; the plain mean when ``n < 3`` or ``trim = 0``; 0 when ``n = 0``)."""
    n = c.numel()
    if n == 0:
        return 0.0
    if trim == 0 or n < 3:
        return float(c.double().mean())
    i = min(max(1, int(trim * n)), (n - 1) // 2)
    return float(c.double().sort().values[i : n - i].mean())


def chi2_penalty(d: Tensor, lam: float, trim: float, clip: float) -> tuple[Tensor, float]:
    """Per-token penalties ``clip(-lam dist, -clip, clip)`` [n] for discriminator logits ``d`` [n], and chi2^.

    ``c = e^d - 1``, ``dist = c / sqrt(chi2^)`` (``c`` when ``chi2^ <= 0``, as the code's branch;
    ``chi2^`` not finite: ``dist`` is 0), 0 where ``dist`` is not finite; float64.
    """
    c = torch.exp(d.double()) - 1.0
    chi2 = trimmed_chi2(c, trim)
    if math.isfinite(chi2) and chi2 > 0:
        dist = c / math.sqrt(chi2)
    elif math.isfinite(chi2):
        dist = c
    else:
        dist = torch.zeros_like(c)
    dist = torch.where(torch.isfinite(dist), dist, torch.zeros_like(dist))
    pen = -lam * dist if lam else torch.zeros_like(dist)
    return pen.clamp(-clip, clip), chi2


def adam_step(disc: dict[str, Any], grads: dict[str, Tensor], lr: float) -> None:
    """One Adam step (betas 0.9 / 0.999, eps 1e-8, bias-corrected) of the discriminator's weights, in place."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    disc["t"] = t = int(disc["t"]) + 1
    for n, g in grads.items():
        m = disc["m"][n].mul_(b1).add_(g, alpha=1 - b1)
        v = disc["v"][n].mul_(b2).addcmul_(g, g, value=1 - b2)
        disc[n] = disc[n] - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)


def _rows(batch: RolloutBatch, key: str) -> list[Tensor]:
    rows = batch.extras.get(key)
    if rows is None:
        raise ValueError(
            f"chi2_occupancy needs batch.extras[{key!r}] from the base_rollouts rollout part: set "
            "AlgoConfig.rollout=BaseRolloutsConfig() (as the orpo_proxy preset does)"
        )
    return [torch.as_tensor(r, dtype=torch.float32) for r in rows]


def train_discriminator(state: dict[str, Any], xp: Tensor, xb: Tensor, cfg: Chi2Occupancy) -> None:
    """``cfg.disc_steps`` Adam steps of ``state["disc"]`` on policy features ``xp`` [n, k] and base ``xb`` [m, k]."""
    disc = state["disc"]
    names = ("w1", "b1", "w2", "b2")
    for _ in range(cfg.disc_steps):
        g = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + int(state["updates"]))
        sp = xp[torch.randperm(len(xp), generator=g)[: cfg.disc_max_tokens]] if len(xp) > cfg.disc_max_tokens else xp
        sb = xb[torch.randperm(len(xb), generator=g)[: cfg.disc_max_tokens]] if len(xb) > cfg.disc_max_tokens else xb
        with torch.enable_grad():
            params = {n: disc[n].detach().requires_grad_(True) for n in names}
            loss = discriminator_loss(discriminator_logits(params, sp), discriminator_logits(params, sb))
            grads = torch.autograd.grad(loss, list(params.values()))
        with torch.no_grad():
            adam_step(disc, dict(zip(names, grads, strict=True)), cfg.disc_lr)
        state["updates"] = int(state["updates"]) + 1


@ADVANTAGES.register("chi2_occupancy", config=Chi2Occupancy)
def chi2_occupancy(batch: RolloutBatch, cfg: Chi2Occupancy) -> Tensor:
    """GRPO advantages of the rewards plus the chi-squared occupancy penalty (see :class:`Chi2Occupancy`).

    Trains the discriminator in ``batch.part_state`` (None: a fresh state, discarded) once, then
    records with ``batch.add_metric`` (``advantage/*``): ``chi2`` (chi2^), ``chi2_disc_loss`` and
    ``chi2_disc_acc`` (after training), ``chi2_d_policy`` / ``chi2_d_base`` (mean logits),
    ``chi2_penalty`` (mean per-sequence penalty), ``chi2_lambda``, ``chi2_base_std``.

    Returns:
        [N, T] advantages in the dtype of ``rewards``, 0 off the mask.
    """
    state = batch.part_state if batch.part_state is not None else cfg.init_state()
    mask = batch.response_mask
    feats, base_feats = _rows(batch, _FEATURES), _rows(batch, _BASE_FEATURES)
    lengths = [int(x) for x in mask.sum(1).tolist()]
    if [len(f) for f in feats] != lengths:
        raise ValueError(
            f"chi2_occupancy: extras['chi2_features'] has {[len(f) for f in feats]} tokens per row, the response mask "
            f"{lengths}"
        )
    k = next((f.shape[-1] for f in feats + base_feats if f.dim() == 2 and f.shape[-1]), 1)
    xp = torch.cat([f.reshape(-1, k) for f in feats]) if feats else torch.zeros(0, k)
    xb = torch.cat([f.reshape(-1, k) for f in base_feats]) if base_feats else torch.zeros(0, k)
    for r in batch.extras.get(_BASE_REWARDS) or []:  # running mean / M2 of the base rewards (Welford)
        if r is None or not math.isfinite(float(r)):
            continue
        state["base_count"] = int(state["base_count"]) + 1
        delta = float(r) - float(state["base_mean"])
        state["base_mean"] = float(state["base_mean"]) + delta / state["base_count"]
        state["base_m2"] = float(state["base_m2"]) + delta * (float(r) - state["base_mean"])
    if state.get("disc") is None:
        state["disc"] = init_discriminator(k, cfg.hidden, cfg.seed)
    if len(xp) and len(xb):
        train_discriminator(state, xp, xb, cfg)
    disc = state["disc"]
    with torch.no_grad():
        d_pol, d_base = discriminator_logits(disc, xp), discriminator_logits(disc, xb)
        n_b = int(state["base_count"])
        std = math.sqrt(float(state["base_m2"]) / (n_b - 1)) if n_b > 1 else 0.0
        lam = cfg.coef * (std if cfg.scale_by_base_std else 1.0)
        pen, chi2 = chi2_penalty(d_pol, lam, cfg.trim, cfg.reward_clip or math.inf)  # [sum L_i] float64
        seq_pen = torch.stack([p.sum() for p in pen.split(lengths)]) if lengths else pen.new_zeros(0)
    shaped = (batch.rewards.double() + seq_pen).to(batch.rewards.dtype)
    adv = grpo(dataclasses.replace(batch, rewards=shaped), GRPOAdvantage(scale=cfg.scale))
    batch.add_metric("chi2", chi2 if math.isfinite(chi2) else 0.0)
    batch.add_metric("chi2_penalty", float(seq_pen.mean()) if seq_pen.numel() else 0.0)
    batch.add_metric("chi2_lambda", lam)
    batch.add_metric("chi2_base_std", std)
    if len(xp) and len(xb):
        batch.add_metric("chi2_disc_loss", float(discriminator_loss(d_pol, d_base)))
        batch.add_metric("chi2_disc_acc", float(torch.cat([d_pol > 0, d_base < 0]).float().mean()))
        batch.add_metric("chi2_d_policy", float(d_pol.mean()))
        batch.add_metric("chi2_d_base", float(d_base.mean()))
    return adv
