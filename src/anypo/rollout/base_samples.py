"""Samples of the frozen base policy next to the policy's, with (prefix, token) features of both, for
ORPO's occupancy-measure discriminator (rollout part ``base_rollouts``; the penalty is
``anypo.advantages.chi2``)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from anypo.rollout.groups import GroupRollout, Request
from anypo.rollout.parts import ROLLOUTS, RolloutPart
from anypo.types import PartConfig, RolloutBatch

__all__ = [
    "BASE_FEATURES",
    "BASE_REWARDS",
    "FEATURES",
    "BaseRollouts",
    "BaseRolloutsConfig",
    "occupancy_features",
    "response_states",
]

FEATURES = "chi2_features"
"""``extras`` key, per row: [L_i, k] float32 features of the row's (prefix, token) pairs, its masked
response tokens in order."""
BASE_FEATURES = "chi2_base_features"
"""``extras`` key, per row: [L'_i, k] features of the base sample matched to the row (the j-th base
sample of the row's prompt for the j-th row of its group; [0, k] when there is none)."""
BASE_REWARDS = "chi2_base_rewards"
"""``extras`` key, per row: the matched base sample's reward (NaN when there is none)."""


@dataclass(frozen=True)
class BaseRolloutsConfig(PartConfig):
    """The policy's groups plus samples of the frozen base policy for the same prompts, and the features
    of every (prefix, token) pair of both, for ORPO's discriminator (``chi2_occupancy`` advantage).

    Paper: "Correlated Proxies: A New Definition and Improved Mitigation for Reward Hacking",
    https://arxiv.org/abs/2403.03185. The official code (github.com/cassidylaidlaw/orpo,
    ``occupancy_measures/agents/orpo.py``) collects a batch of the frozen base ("safe") policy every
    iteration next to the current policy's and trains a discriminator between their (state, action)
    pairs. **Reconstructed** for language models (the paper's LLM code was not found): a state is the
    prompt and the response prefix, an action the next token, and

        phi(s_t, a_t) = P^T [ norm(h_{t-1}) ; norm(e(a_t)) ]        [k]

    with ``h_{t-1}`` the base model's final hidden state that predicts token ``t``, ``e(a_t)`` the base
    model's input embedding of the token, ``norm`` a parameter-free layer norm, and ``P`` a fixed
    Gaussian projection [2H, k] (entries N(0, 1 / 2H), seeded by ``seed``). The features are a fixed
    function of (s, a) for the whole run (the base model's), for the policy's and the base samples alike.

    Per draw: the requested groups are generated and scored as usual; then ``base_samples`` samples of
    each requested prompt (0: the group's size) are generated with the base weights swapped into the
    engine's model and scored by the same reward (never trained on); row ``j`` of a group is matched
    with base sample ``j`` of its prompt. The base weights are the policy's at the part's construction
    (the initial weights, as the loop's reference; rebuilt the same way on ``--resume``); with LoRA the
    adapters are disabled instead (which an engine sampling from the module itself sees; an engine with
    its own merged copy, vllm, would not: LoRA with vllm is not supported here). An engine with its own copy of the weights gets the base weights
    before and the policy's after (two ``load_weights`` per draw); the hf engine samples from the
    module itself. Base tokens count in ``rollout/generated_tokens``.

    Writes ``extras["chi2_features"]``, ``extras["chi2_base_features"]``, ``extras["chi2_base_rewards"]``;
    logs ``rollout/base_reward``, ``rollout/base_accuracy`` (the task's correctness of the base samples)
    and ``rollout/base_tokens``. Memory: one model's worth for the base weights, ``4 k`` bytes per token
    for the features.
    """

    base_samples: int = 0
    """Base samples per prompt (0: as many as the prompt's group)."""
    feature_dim: int = 64
    """k, the size of a (prefix, token) feature."""
    seed: int = 0
    """Seed of the projection P."""
    micro: int = 8
    """Sequences per no-grad forward of the feature pass."""

    def __post_init__(self) -> None:
        if self.base_samples < 0:
            raise ValueError(
                f"BaseRolloutsConfig.base_samples must be >= 0 (0: the group size), got {self.base_samples}"
            )
        for f in ("feature_dim", "micro"):
            if getattr(self, f) < 1:
                raise ValueError(f"BaseRolloutsConfig.{f} must be >= 1, got {getattr(self, f)}")


def _layer_norm(x: Tensor) -> Tensor:
    return torch.nn.functional.layer_norm(x.float(), x.shape[-1:])


@torch.no_grad()
def response_states(model: torch.nn.Module, batch: RolloutBatch) -> Tensor:
    """[n, H] the final hidden states that predict the masked response tokens of ``batch``, row-major
    (the packed pass of :func:`anypo.policy.response_hidden`, else one padded forward)."""
    from anypo.policy import _inputs, response_hidden

    packed = response_hidden(model, batch)
    if packed is not None:
        return packed[0].float()
    ids, attn, pos, T = _inputs(batch)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, output_hidden_states=True, use_cache=False)
    h = out.hidden_states[-1][:, -T - 1 : -1]  # position P-1+t predicts response token t
    return h[batch.response_mask.bool()].float()


@torch.no_grad()
def occupancy_features(model: torch.nn.Module, batch: RolloutBatch, proj: Tensor, micro: int) -> list[Tensor]:
    """Per row of ``batch``: [L_i, k] ``proj^T [norm(h_{t-1}); norm(e(a_t))]`` for its masked tokens in order."""
    out: list[Tensor] = [proj.new_zeros(0, proj.shape[1]) for _ in range(batch.num_seqs)]
    if batch.num_seqs == 0:
        return out
    from anypo.policy import micro_batches

    table = model.get_input_embeddings()
    for idx, mb in micro_batches(batch, micro):
        mask = mb.response_mask.bool()
        h = response_states(model, mb)  # [n, H]
        e = table(mb.response_ids[mask]).float()  # [n, H]
        x = torch.cat([_layer_norm(h), _layer_norm(e)], dim=-1) @ proj  # [n, k]
        for r, piece in zip(idx.tolist(), x.split(mask.sum(1).tolist()), strict=True):
            out[r] = piece.contiguous()
    return out


@ROLLOUTS.register("base_rollouts", config=BaseRolloutsConfig)
class BaseRollouts(RolloutPart):
    """The policy's groups, the base policy's samples of the same prompts and both sets' features
    (see :class:`BaseRolloutsConfig`)."""

    cfg: BaseRolloutsConfig

    def __init__(self, cfg: BaseRolloutsConfig, groups: GroupRollout):
        from anypo.models import is_lora

        super().__init__(cfg, groups)
        model = getattr(groups.engine, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise ValueError(
                "base_rollouts samples the base policy with the policy module's weights swapped: the engine must "
                "expose it as engine.model (the hf and vllm engines do)"
            )
        self.model = model
        self.lora = is_lora(model)
        # the initial weights (the part is built before any update and again, from them, on --resume)
        self.base = None if self.lora else {n: p.detach().clone() for n, p in model.named_parameters()}
        self._proj: Tensor | None = None

    @contextmanager
    def base_weights(self) -> Iterator[torch.nn.Module]:
        """``self.model`` running the base policy inside the block (weights swapped, or adapters off)."""
        if self.lora:
            with self.model.disable_adapter():
                yield self.model
            return
        from anypo.rollout.old_pass import swapped_weights

        with swapped_weights(self.model, self.base):
            yield self.model

    def projection(self, width: int) -> Tensor:
        """The fixed [width, k] Gaussian projection (entries N(0, 1 / width))."""
        if self._proj is None or self._proj.shape[0] != width:
            g = torch.Generator().manual_seed(int(self.cfg.seed) * 7_919 + 17)
            self._proj = torch.randn(width, self.cfg.feature_dim, generator=g) / math.sqrt(width)
        return self._proj

    def features(self, model: torch.nn.Module, batch: RolloutBatch) -> list[Tensor]:
        """Per row: the [L_i, k] features of ``batch`` under ``model`` (the base weights)."""
        width = 2 * int(model.get_input_embeddings().weight.shape[1])
        return occupancy_features(model, batch, self.projection(width), self.cfg.micro)

    def collect(self, requests: Sequence[Request], seed: int, step: int, group_offset: int = 0) -> RolloutBatch:
        g = self.groups
        batch = g.collect(requests, seed, group_offset)
        sizes = [self.cfg.base_samples or r.n for r in requests]
        start = g.generated_tokens
        with self.base_weights() as model:
            g.engine.load_weights(model.state_dict())  # an engine with its own copy samples the base weights
            base = g.collect([Request(r.index, m) for r, m in zip(requests, sizes, strict=True)], seed + 15_485_863)
            feats = self.features(model, batch)
            base_feats = self.features(model, base)
        g.engine.load_weights(self.model.state_dict())  # and the policy's again
        # row j of request k's group <-> base sample j of request k
        first, pos = [], 0
        for m in sizes:
            first.append(pos)
            pos += m
        k_dim = self.cfg.feature_dim
        matched, rewards = [], []
        j_in_group: dict[int, int] = {}
        gids = batch.group_ids.tolist()
        order = {gid: k for k, gid in enumerate(dict.fromkeys(gids))}
        for gid in gids:
            k = order[gid]
            j = j_in_group.get(gid, 0)
            j_in_group[gid] = j + 1
            if j < sizes[k]:
                matched.append(base_feats[first[k] + j])
                rewards.append(float(base.rewards[first[k] + j]))
            else:
                matched.append(torch.zeros(0, k_dim))
                rewards.append(math.nan)
        batch.extras[FEATURES] = feats
        batch.extras[BASE_FEATURES] = matched
        batch.extras[BASE_REWARDS] = rewards
        self.add("base_tokens", g.generated_tokens - start)
        if base.num_seqs:
            self.metrics["rollout/base_reward"] = float(base.rewards.double().mean())
            if "correct" in base.extras:
                self.metrics["rollout/base_accuracy"] = sum(base.extras["correct"]) / base.num_seqs
        return batch
