"""ExPO's SFT term on self-explanation positives."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anypo.ops import zero_masked
from anypo.regularizers.basic import REGULARIZERS
from anypo.types import LossOutput, PartConfig, PolicyOutput, RolloutBatch

__all__ = ["ExPOSFT", "expo_sft"]


@dataclass(frozen=True)
class ExPOSFT(PartConfig):
    """ExP-GRPO's likelihood term on self-explanations: ``-coef * sum_{i in E, t} lp_it / n_tokens``.

    Paper: "ExPO: Unlocking Hard Reasoning with Self-Explanation-Guided Reinforcement Learning",
    https://arxiv.org/abs/2507.02834: ExP-GRPO adds ``-log pi_theta(c | q)`` of the self-explanation
    ``c`` under the plain prompt ``q`` to the GRPO loss. RECONSTRUCTED: the coefficient (0.1 in the
    ``expo`` preset) is UNVERIFIED; the rows are those flagged ``extras["expo_positive"]`` by the
    ``self_explain`` rollout part. Normalisation: the sum over their tokens is divided by the
    mini-batch's response-token count (``LossScale.num_tokens``), so that micro-batch losses sum to the
    mini-batch's (a token mean over only the positives' tokens would need their global count).

    Shapes: ``logprobs [N, T]``, ``response_mask [N, T]``, ``extras["expo_positive"] [N]``.
    """

    coef: float = 0.1
    """Weight of the SFT term."""

    def __post_init__(self) -> None:
        if self.coef < 0:
            raise ValueError(f"coef must be >= 0, got {self.coef}")


@REGULARIZERS.register("expo_sft", config=ExPOSFT)
def expo_sft(out: PolicyOutput, batch: RolloutBatch, cfg: ExPOSFT) -> LossOutput:
    """``-coef * sum over flagged rows' response tokens of lp / scale.num_tokens`` (0 without flags).

    Returns:
        0-d loss and ``expo/sft_nll`` (the term without ``coef``, summed over micro-batches).
    """
    lp = out.logprobs
    flags = batch.extras.get("expo_positive")
    e = lp.new_zeros(batch.num_seqs) if flags is None else torch.as_tensor(flags, dtype=lp.dtype, device=lp.device)
    masked = zero_masked(lp, batch.response_mask) * batch.response_mask.to(lp.dtype)  # [N, T]
    nll = -(masked.sum(1) * e).sum() / max(batch.scale().num_tokens, 1.0)
    return LossOutput(
        loss=cfg.coef * nll, metrics={"expo/sft_nll": float(nll.detach())}, reductions={"expo/sft_nll": "sum"}
    )
