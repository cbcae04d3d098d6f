"""ROVER: fit the Q-function of the uniformly random policy, parametrised by the policy's own log-probs.

Notation: ``Q_it = rho (lp_it - old_it)`` (so that ``pi ∝ pi_old exp(Q / rho)``: acting is a softmax
over Q), ``M(s) = (1/|V|) sum_a log pi(a | s)`` the mean log-probability over the vocabulary at a
state, ``A_it`` the (GRPO) advantages, broadcast over the response.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from anypo.losses.common import POLICY_LOSSES, PolicyLossConfig, log_ratio, policy_inputs, ratio_metrics
from anypo.ops import aggregate, masked_mean, zero_masked
from anypo.types import LossOutput, PolicyOutput, RolloutBatch

__all__ = ["OLD_MEAN_LOGPROBS", "ROVER", "mean_log_softmax", "rover"]

OLD_MEAN_LOGPROBS = "old_mean_logprobs"
"""Key of ``RolloutBatch.extras`` holding [N, T] ``M_old(s_t)`` of the behaviour policy (``old_means="batch"``)."""


@torch.no_grad()
def mean_log_softmax(logits: Tensor, chunk: int = 256) -> Tensor:
    """``M = mean_a log softmax(logits)_a = mean_a logits_a - logsumexp_a logits_a`` at every position.

    Args:
        logits: [..., V] (temperature-scaled) logits.
        chunk: positions reduced at once: at most a [chunk, V] temporary besides the input.

    Returns:
        [...] detached, in the dtype of ``logits`` (the computation runs in at least float32).
    """
    flat = logits.detach().reshape(-1, logits.shape[-1])  # [n, V], a view
    out = torch.empty(flat.shape[0], dtype=logits.dtype, device=logits.device)
    for i in range(0, flat.shape[0], chunk):
        z = flat[i : i + chunk]
        z = z if z.dtype == torch.float64 else z.float()
        out[i : i + chunk] = (z.mean(-1) - torch.logsumexp(z, dim=-1)).to(out.dtype)
    return out.reshape(logits.shape[:-1])


@dataclass(frozen=True)
class ROVER(PolicyLossConfig):
    """ROVER: regress the policy-parametrised Q onto the uniform-policy Bellman target.

    Paper: H. He, Y. Ye, Q. Cai, C. Hu, B. Jiao, D. Jiang, L. Pan, "Random Policy Valuation is Enough
    for LLM Reasoning with Verifiable Rewards", https://arxiv.org/abs/2509.24981 (Sec. 3-4: the
    uniform-policy Q-function, its parametrisation by the policy and the Bellman target; equation
    numbers not verified: the method section could not be read). Verified against the official code,
    github.com/yuxiaooye/ROVER ``Math/verl/workers/actor/dp_actor.py`` (``DataParallelROVERActor
    .update_policy``), ``Math/verl/trainer/ppo/core_algos.py::compute_rover_loss``,
    ``Math/verl/utils/torch_functional.py::sum_log_softmax`` and
    ``Math/scripts/deepscaler/train/rover_qwen3_8b.sh``:

        Q_it      = rho (lp_it - old_it)
        y_it      = A_it + c rho (M_theta(s_i,t+1) - M_old(s_i,t+1)) m_i,t+1    (0 bootstrap at the last token)
        loss      = token-mean of (Q_it - sg[y_it])^2                          (level="token")
        loss      = (1/N) sum_i ((1/|o_i|) sum_t Q_it - A_i)^2                  (level="response")

    with ``M(s) = mean(logits) - logsumexp(logits)`` the mean log-probability over the vocabulary
    (temperature-scaled logits), ``A`` the GRPO advantage (the official script's
    ``adv_estimator=grpo``), ``c = next_q_scale``. No critic and no reference model. ``clip`` is the
    code's "rover clip": ``Q`` is held (no gradient) at ``log(1 + clip)`` when above it and below its
    target, at ``log(1 - clip)`` when below it and above its target.

    Where ``M_old`` comes from (``old_means``):

    * ``"on_policy"`` (default): ``M_old = M_theta``, exact at the single update of an on-policy step
      (the code's ``on_policy`` branch, where the stored and the current values coincide), so the
      bootstrap term is 0 and no logits are needed: the target is the advantage and the gradient is
      ``-2 rho A grad lp / N_tok`` at ``lp = old``. The config check refuses it with several updates
      per rollout batch (``requires_on_policy``), where it would silently drop the bootstrap.
    * ``"batch"``: ``M_old`` from ``batch.extras["old_mean_logprobs"]`` [N, T] (the behaviour policy's
      ``mean_log_softmax`` at every response position, which the loop must store in the old-log-prob
      pass: ``needs_old_mean_logprobs``), ``M_theta`` from the training forward's logits
      (``needs_logits``), reduced in chunks without a gradient. This is the official run's regime
      (mini-batches of 32 of 128 prompts).

    ``next_q_scale = 0`` is the code's ``target_adv_only`` ablation (valid off-policy, needs neither).
    Deviation: the token mean is over the whole mini-batch (the code averages micro-batch means,
    equal when micro-batches hold equal token counts).

    Official run (Qwen3-8B, DeepScaleR): rho (``rover_t``) 1.0, ``next_q_scale_factor`` 1.0, G = 8,
    rollout temperature 0.6, lr 1e-6, 128 prompts per step in mini-batches of 32, no KL, no clip.

    Shapes: ``logprobs``, ``old_logprobs``, ``advantages``, ``response_mask`` [N, T]; ``logits``
    [N, T, V] and ``extras["old_mean_logprobs"]`` [N, >= T] with ``old_means="batch"`` -> 0-d loss.
    """

    aggregation: Literal["token_mean"] = "token_mean"
    """The official token-level loss is a token mean (level="response" is a mean over responses)."""
    aggregations: ClassVar[tuple[str, ...]] = ("token_mean",)
    """The only aggregation accepted: the official loss's (level="response" reduces per response itself)."""
    rho: float = 1.0
    """Temperature of the Q parametrisation Q = rho (lp - old) (the code's rover_t)."""
    next_q_scale: float = 1.0
    """c: weight of the bootstrapped next-state term (the code's next_q_scale_factor); 0: target = A."""
    level: Literal["token", "response"] = "token"
    """token: token-level squared error (official default); response: (mean_t Q - A_i)^2 per response."""
    clip: float | None = None
    """Rover clip epsilon (the code's use_rover_clip with clip_ratio); None: off, as the official run."""
    old_means: Literal["on_policy", "batch"] = "on_policy"
    """Source of M_old: on_policy (= M_theta, one update per rollout) or batch (extras['old_mean_logprobs'])."""

    def __post_init__(self) -> None:
        super().__post_init__()  # aggregation: token_mean only (``aggregations``)
        if not self.rho > 0:
            raise ValueError(f"ROVER.rho must be > 0 (rover_t), got {self.rho}")
        if self.next_q_scale < 0:
            raise ValueError(f"ROVER.next_q_scale must be >= 0, got {self.next_q_scale}")
        if self.level not in ("token", "response"):
            raise ValueError(f"ROVER.level must be 'token' or 'response', got {self.level!r}")
        if self.clip is not None and not 0 < self.clip < 1:
            raise ValueError(f"ROVER.clip must be in (0, 1) or None, got {self.clip}")
        if self.old_means not in ("on_policy", "batch"):
            raise ValueError(f"ROVER.old_means must be 'on_policy' or 'batch', got {self.old_means!r}")

    @property
    def _bootstraps(self) -> bool:
        return self.level == "token" and self.next_q_scale != 0

    @property
    def needs_logits(self) -> bool:
        """M_theta(s) at every position needs the training forward's full logits."""
        return self._bootstraps and self.old_means == "batch"

    @property
    def needs_old_mean_logprobs(self) -> bool:
        """The loop must store the behaviour policy's mean log-softmax per position (extras['old_mean_logprobs'])."""
        return self._bootstraps and self.old_means == "batch"

    @property
    def requires_on_policy(self) -> bool:
        """With old_means='on_policy' the bootstrap term is only right at the single update of a step."""
        return self._bootstraps and self.old_means == "on_policy"

    @property
    def off_policy_option(self) -> str:
        """old_means='batch' reads the behaviour policy's mean log-probs: right at every update."""
        return "--algo.loss.old-means batch (the behaviour policy's mean log-probs, stored by the old-log-prob pass)"


def _bootstrap(out: PolicyOutput, batch: RolloutBatch, cfg: ROVER, mask: Tensor) -> Tensor:
    """[N, T] ``c rho (M_theta - M_old)`` at the next position, masked by it; 0 at the last column."""
    N, T = mask.shape
    if out.logits is None:
        raise ValueError("ROVER with old_means='batch' needs PolicyOutput.logits (the config declares needs_logits)")
    old_m = batch.extras.get(OLD_MEAN_LOGPROBS)
    if old_m is None:
        raise ValueError(
            f"ROVER with old_means='batch' needs batch.extras[{OLD_MEAN_LOGPROBS!r}] [N, T], the behaviour policy's "
            "mean log-softmax at each response position (needs_old_mean_logprobs): store it in the old-log-prob pass, "
            "or use old_means='on_policy' with one update per rollout batch"
        )
    if old_m.shape[0] != N or old_m.shape[1] < T or out.logits.shape[:2] != (N, T):
        raise ValueError(
            f"ROVER: extras[{OLD_MEAN_LOGPROBS!r}] {tuple(old_m.shape)} and logits {tuple(out.logits.shape)} must cover "
            f"the response mask {(N, T)}"
        )
    m_theta = mean_log_softmax(out.logits).to(mask.dtype)  # [N, T] no gradient
    m_old = old_m[:, :T].to(mask.dtype)  # responses are right-padded: trimming cuts trailing columns
    diff = zero_masked(m_theta - m_old, mask)  # [N, T]
    nxt = torch.zeros_like(diff)
    nxt[:, :-1] = diff[:, 1:] * mask[:, 1:]  # the value of the next state, 0 past the response
    return cfg.next_q_scale * cfg.rho * nxt


@POLICY_LOSSES.register("rover", config=ROVER)
def rover(out: PolicyOutput, batch: RolloutBatch, cfg: ROVER) -> LossOutput:
    """ROVER: token-mean of ``(rho (lp - old) - sg[A + c rho (M_theta - M_old)(s_t+1)])^2``.

    Args:
        out: ``logprobs [N, T]`` with grad; ``logits [N, T, V]`` with ``old_means="batch"``.
        batch: ``old_logprobs``, ``advantages``, ``response_mask`` [N, T] (and
            ``extras["old_mean_logprobs"]`` with ``old_means="batch"``).
        cfg: rho, next_q_scale, level, clip, old_means.

    Returns:
        0-d loss and ``rover/q_mean``, ``rover/target_mean`` (token means of Q and of its target),
        ``rover/next_q_mean`` (token mean of the bootstrap term), ``rover/clip_high_frac`` /
        ``rover/clip_low_frac`` (with ``clip``), ``policy/ratio_*``, ``policy/approx_kl``,
        ``policy/loss``.
    """
    lp, old, adv, mask = policy_inputs(out, batch)
    log_r = log_ratio(lp, old)  # [N, T]
    q = cfg.rho * log_r  # [N, T] Q = rho log(pi / pi_old)
    metrics = ratio_metrics(log_r, mask)
    if cfg.level == "response":
        length = mask.sum(-1)  # [N]
        A = adv.sum(-1) / length.clamp_min(1.0)  # [N] the response's advantage (the code's adv[:, 0])
        seq_loss = (q.sum(-1) / length.clamp_min(1.0) - A).square()  # [N]
        loss = aggregate(seq_loss.unsqueeze(-1).expand_as(q), mask, "seq_mean_token_mean", batch.scale())
        metrics |= {"policy/loss": float(loss.detach()), "rover/q_mean": float(masked_mean(q.detach(), mask))}
        return LossOutput(loss=loss, metrics=metrics, reductions={"policy/loss": "sum"})
    bootstrap = _bootstrap(out, batch, cfg, mask) if cfg.needs_logits else torch.zeros_like(q)
    target = (adv + bootstrap).detach()  # [N, T]
    if cfg.clip is not None:
        hi, lo = math.log1p(cfg.clip), math.log1p(-cfg.clip)
        high = (target > q) & (q > hi)  # moving further up, away from the band: hold at log(1 + eps)
        low = (target < q) & (q < lo)
        q = torch.where(high, torch.full_like(q, hi), torch.where(low, torch.full_like(q, lo), q))
        metrics["rover/clip_high_frac"] = float(masked_mean(high.to(q.dtype), mask))
        metrics["rover/clip_low_frac"] = float(masked_mean(low.to(q.dtype), mask))
    loss = aggregate((q - target).square(), mask, "token_mean", batch.scale())
    with torch.no_grad():
        metrics["rover/q_mean"] = float(masked_mean(q, mask))
        metrics["rover/target_mean"] = float(masked_mean(target, mask))
        metrics["rover/next_q_mean"] = float(masked_mean(bootstrap, mask))
    metrics["policy/loss"] = float(loss.detach())
    return LossOutput(loss=loss, metrics=metrics, reductions={"policy/loss": "sum"})
