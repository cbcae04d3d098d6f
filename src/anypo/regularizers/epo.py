"""EPO: entropy bonus plus entropy smoothing against the running per-turn entropy history.

Notation: ``H_it`` [N, T] the next-token entropy of the current policy at response token ``t`` of
sample ``i`` (with gradient), ``m`` the response mask, ``s_it`` the turn index of a token (0 on
single-turn tasks), ``H_hist[s]`` the mean over past updates of the token-mean entropy at turn ``s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from anypo.ops import AGGREGATIONS, Aggregation, aggregate, masked_mean, zero_masked
from anypo.registry import REGISTRIES
from anypo.types import LossOutput, PartConfig, PolicyOutput, RolloutBatch

REGULARIZERS = REGISTRIES["regularizer"]

__all__ = ["EPO", "TURN_IDS", "epo", "epo_phase_weight", "turn_index"]

TURN_IDS = "turn_ids"
"""Key of ``RolloutBatch.extras`` with the turn index of each sample ([N]: one turn per row, as
verl-agent's ``rollout_step``) or of each token ([N, T]: several turns in one row). Absent: turn 0."""

_MASS = "epo/turn_entropy_mass/"
_SHARE = "epo/turn_token_share/"


def epo_phase_weight(step: int, total: int = 150) -> float:
    """EPO's adaptive phase weight ``w(e)`` (official ``_calculate_epoch_based_entropy_weight``):
    ``1 - 0.2 (1 - exp(-2 e / h))`` for ``e <= h = total // 2`` (1.0 -> ~0.827), then
    ``0.8 exp(-3 (e - h) / (total - h))`` (0.8 -> ~0.040); ``e`` clamped to ``[0, total]``."""
    if total <= 0:
        return 1.0
    e = max(0, min(step, total))
    h = total // 2
    if e <= h:
        return 1.0 if h == 0 else 1.0 - 0.2 * (1.0 - math.exp(-2.0 * e / h))
    rest = total - h
    return 0.8 if rest == 0 else 0.8 * math.exp(-3.0 * (e - h) / rest)


@dataclass(frozen=True)
class EPO(PartConfig):
    """Entropy-regularised policy optimisation: an entropy bonus, an entropy-smoothing penalty against the
    historical per-turn entropy, and a phase weight over training.

    Paper: W. Xu et al., "EPO: Entropy-regularized Policy Optimization for LLM Agents Reinforcement
    Learning", https://arxiv.org/abs/2509.22576 (three mechanisms: trajectory-level entropy
    regularisation, an entropy-smoothing regulariser bounding entropy within historical averages, an
    adaptive phase-based weighting; the paper's equations could not be read). Verified against the
    official code, github.com/WujiangXu/EPO: ``verl/workers/actor/dp_actor.py`` (``update_policy``,
    ``generate_entropy_penalty``, ``_calculate_epoch_based_entropy_weight``),
    ``verl/trainer/ppo/ray_trainer.py`` (``entropy_history``), ``agent_system/multi_turn_rollout/
    rollout_loop.py`` (per-turn entropies). Per token, with ``lo = min_ratio H_hist[s]``,
    ``hi = max_ratio H_hist[s]`` and ``w = epo_phase_weight(e, phase_steps)``:

        smoothing="code" (default, the official code):  P_it = penalty * w * 1[not lo < H_it < hi]
        smoothing="hinge" (anypo's differentiable variant, not the paper's or the code's):
                                                     P_it = penalty * w * (relu(lo - H_it) + relu(H_it - hi))
        L = -coef * ( agg(H) - smooth_coef * agg(P) )

    ``mask_mode="seq"`` compares each response's token-mean entropy with the band instead, and
    broadcasts ``P_i`` to its tokens. In the official code ``P`` is built from constants
    (``torch.where(cond, 0, penalty)``): **the smoothing term and the phase weight change the loss value
    only, their gradient is exactly 0**; the training signal beyond the policy loss is the entropy
    bonus ``-coef grad agg(H)``. ``smoothing="hinge"`` is a design of ours that gives the penalty a
    gradient pushing ``H`` back into the band; label results with it as such.

    State (``stateful``, saved in checkpoints): per turn, the sum and count of the per-update
    token-mean entropies ``e[s]`` (``H_hist[s] = sum / count``), and the number of optimizer steps
    taken (``e`` of the phase weight). ``update_state`` reads ``e[s]`` from this part's metrics after
    every optimizer step.

    Deviations from the official code (all exact at one update per rollout batch on single-turn data
    unless said):
    * the history at step ``k`` holds the updates before ``k``; the code appends step ``k``'s rollout
      entropy (under the behaviour policy, measured before the update) before updating. At the first
      step there is no history and no smoothing. With several optimizer steps per rollout each step
      adds an entry (the code: one per rollout batch);
    * a turn index absent from the history gets no smoothing; the code left-pads the history with
      zeros to ``env.max_steps`` entries per iteration;
    * smoothing applies to the tokens of turns ``>= smooth_from_turn`` (the code: to a whole
      micro-batch as soon as one of its samples has ``rollout_step >= max_step // 2``, with
      ``max_step`` read under a key its scripts never set, so 50 // 2 = 25; per token keeps the loss
      independent of ``micro_batch_size``). On single-turn data every token has turn 0, so the code's
      gate never opens; the ``epo`` preset sets ``smooth_from_turn=0``;
    * ``mask_mode="seq"`` uses the masked mean entropy of a response (the code: the mean over the
      padded length);
    * ``e`` of the phase weight counts optimizer steps (the code: trainer epochs; one step per epoch in
      its environment runs) against ``phase_steps`` (hard-coded 150 in the code).

    Needs the entropy with its gradient (``needs_entropy``: the loop materialises the logits).

    Shapes: ``entropy``, ``response_mask`` [N, T]; optional ``extras["turn_ids"]`` [N] or [N, T]
    (ints) -> 0-d loss.
    """

    coef: float = 0.001
    """c_H: weight of the entropy term (verl-agent's entropy_coeff)."""
    smooth: bool = True
    """Add the entropy-smoothing penalty (the code's entropy_smooth; on in every EPO recipe)."""
    smooth_coef: float = 1.0
    """c_s: weight of the smoothing penalty inside the entropy term (entropy_smooth_coeff)."""
    min_ratio: float = 0.0
    """Lower edge of the band as a multiple of H_hist (ALFWorld / ScienceWorld recipes: 0)."""
    max_ratio: float = 2.0
    """Upper edge of the band as a multiple of H_hist (recipes: 2.0)."""
    penalty: float = 0.1
    """Penalty outside the band (entropy_smooth_out_range_penalty; ALFWorld 0.1, ScienceWorld 0.05)."""
    mask_mode: Literal["token", "seq"] = "token"
    """token: each token's entropy against the band; seq: each response's mean entropy."""
    smoothing: Literal["code", "hinge"] = "code"
    """code: the official constant penalty (no gradient); hinge: anypo's differentiable band penalty."""
    phase_weights: bool = True
    """Multiply the penalty by the phase weight w(e) (enable_smooth_weights; on in the recipes)."""
    phase_steps: int = 150
    """E of w(e): optimizer steps over which the weight decays (the code hard-codes 150 epochs)."""
    smooth_from_turn: int = 25
    """Smooth only tokens of turns >= this (the code: max_step // 2 = 25); 0: every token."""
    aggregation: Aggregation = "token_mean"
    """Aggregation of H and P over response tokens (verl's loss_agg_mode default: token-mean)."""
    norm_length: float | None = None
    """Constant length of seq_mean_token_sum_norm; None: the mini-batch's."""

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"EPO.aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.mask_mode not in ("token", "seq"):
            raise ValueError(f"EPO.mask_mode must be 'token' or 'seq', got {self.mask_mode!r}")
        if self.smoothing not in ("code", "hinge"):
            raise ValueError(f"EPO.smoothing must be 'code' or 'hinge', got {self.smoothing!r}")
        if not 0 <= self.min_ratio <= self.max_ratio:
            raise ValueError(
                f"EPO needs 0 <= min_ratio <= max_ratio, got min_ratio={self.min_ratio}, max_ratio={self.max_ratio}"
            )
        if self.penalty < 0 or self.smooth_coef < 0:
            raise ValueError(f"EPO.penalty and EPO.smooth_coef must be >= 0, got {self.penalty}, {self.smooth_coef}")
        if self.phase_steps < 0 or self.smooth_from_turn < 0:
            raise ValueError(
                f"EPO.phase_steps and EPO.smooth_from_turn must be >= 0, got {self.phase_steps}, {self.smooth_from_turn}"
            )

    @property
    def needs_entropy(self) -> bool:
        return True

    @property
    def stateful(self) -> bool:
        """The per-turn entropy history and the phase counter persist across steps."""
        return self.smooth

    def init_state(self) -> dict[str, Any]:
        return {"turn_entropy_sum": [], "turn_count": [], "updates": 0}

    def update_state(self, state: dict[str, Any], metrics: dict[str, float]) -> None:
        """After an optimizer step: append this update's token-mean entropy of every turn it saw."""
        sums, counts = state.setdefault("turn_entropy_sum", []), state.setdefault("turn_count", [])
        for key, share in metrics.items():
            if not key.startswith(_SHARE) or share <= 0:
                continue
            s = int(key[len(_SHARE) :])
            while len(sums) <= s:
                sums.append(0.0)
                counts.append(0)
            sums[s] += metrics[_MASS + str(s)] / share
            counts[s] += 1
        state["updates"] = int(state.get("updates", 0)) + 1


def turn_index(batch: RolloutBatch, shape: torch.Size) -> Tensor:
    """[N, T] long turn index of every token: ``extras["turn_ids"]`` ([N] broadcast, or [N, T'] cut to
    the batch's ``T``: micro-batches are trimmed on the right), else 0."""
    ids = batch.extras.get(TURN_IDS)
    if ids is None:
        return torch.zeros(shape, dtype=torch.long)
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() == 1 and ids.shape[0] == shape[0]:
        return ids[:, None].expand(shape)
    if ids.dim() == 2 and ids.shape[0] == shape[0] and ids.shape[1] >= shape[1]:
        return ids[:, : shape[1]]
    raise ValueError(
        f"batch.extras[{TURN_IDS!r}] must be [N] or [N, T] turn indices for a batch of shape {tuple(shape)}, "
        f"got {tuple(ids.shape)}"
    )


def _history(state: dict[str, Any] | None, turns: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """([N, T] H_hist of each token's turn, [N, T] bool: the turn has a history)."""
    sums = list(state.get("turn_entropy_sum", [])) if state else []
    counts = list(state.get("turn_count", [])) if state else []
    if not sums:
        return torch.zeros(turns.shape, dtype=dtype), torch.zeros(turns.shape, dtype=torch.bool)
    table = torch.tensor([s / c if c else 0.0 for s, c in zip(sums, counts, strict=True)], dtype=dtype)
    known = torch.tensor([c > 0 for c in counts])
    inside = (turns >= 0) & (turns < len(sums))
    idx = turns.clamp(0, len(sums) - 1)
    return table[idx], known[idx] & inside


@REGULARIZERS.register("epo", config=EPO)
def epo(out: PolicyOutput, batch: RolloutBatch, cfg: EPO) -> LossOutput:
    """EPO: ``-coef * (agg(H) - smooth_coef * agg(P))`` with the smoothing penalty ``P`` above.

    Args:
        out: ``entropy [N, T]`` with grad.
        batch: ``response_mask [N, T]``; ``part_state`` (the entropy history; None: no smoothing);
            optional ``extras["turn_ids"]``.
        cfg: coefficients, band, smoothing form, phase schedule, aggregation.

    Returns:
        0-d loss and ``policy/entropy`` (agg(H)), ``epo/penalty`` (agg(P)), ``epo/out_of_band_frac``
        (share of response tokens outside the band among the smoothed ones, over all response
        tokens), ``epo/phase_weight`` (w(e); 1 without phase weights), ``epo/history_entropy`` (token
        mean of H_hist over the smoothed tokens' turns, over all response tokens), and per turn ``s``
        ``epo/turn_entropy_mass/s`` and ``epo/turn_token_share/s`` (sum of H and count of tokens of
        turn s, over the mini-batch's tokens: their ratio is the turn's token-mean entropy, which
        ``update_state`` adds to the history).
    """
    if out.entropy is None:
        raise ValueError("PolicyOutput.entropy is None, but the epo regularizer needs it (needs_entropy)")
    mask = batch.response_mask.to(out.entropy.dtype)
    m = mask != 0
    H = zero_masked(out.entropy, mask)  # [N, T]
    scale = batch.scale()
    n_tok = max(scale.num_tokens, 1e-8)
    ent = aggregate(H, mask, cfg.aggregation, scale, cfg.norm_length)
    turns = turn_index(batch, H.shape)  # [N, T]
    metrics: dict[str, float] = {"policy/entropy": float(ent.detach())}
    loss_inner = ent
    if cfg.smooth:
        state = batch.part_state
        hist, known = _history(state, turns, H.dtype)  # [N, T]
        on = m & known & (turns >= cfg.smooth_from_turn)  # tokens the smoothing applies to
        w = epo_phase_weight(int(state.get("updates", 0)) if state else 0, cfg.phase_steps)
        w = w if cfg.phase_weights else 1.0
        x = H if cfg.mask_mode == "token" else masked_mean(H, mask, dim=-1)[:, None].expand_as(H)  # [N, T]
        lo, hi = cfg.min_ratio * hist, cfg.max_ratio * hist
        outside = ~((x > lo) & (x < hi))  # strict, as the code
        if cfg.smoothing == "code":
            P = torch.where(outside, torch.full_like(H, cfg.penalty), torch.zeros_like(H)).detach()
        else:
            P = cfg.penalty * (torch.relu(lo - x) + torch.relu(x - hi))
        P = torch.where(on, w * P, torch.zeros_like(P))  # [N, T]
        pen = aggregate(P, mask, cfg.aggregation, scale, cfg.norm_length)
        loss_inner = ent - cfg.smooth_coef * pen
        metrics["epo/penalty"] = float(pen.detach())
        metrics["epo/out_of_band_frac"] = float((on & outside).sum()) / n_tok
        metrics["epo/phase_weight"] = w
        metrics["epo/history_entropy"] = float(zero_masked(hist, on).sum()) / n_tok
        with torch.no_grad():  # per-turn entropy of this update, for update_state
            for s in torch.unique(turns[m]).tolist():
                at = m & (turns == s)
                metrics[f"{_MASS}{s}"] = float(H.detach()[at].sum()) / n_tok
                metrics[f"{_SHARE}{s}"] = float(at.sum()) / n_tok
    reductions = {k: "sum" for k in metrics}
    reductions["epo/phase_weight"] = "max"
    return LossOutput(loss=-cfg.coef * loss_inner, metrics=metrics, reductions=reductions)
