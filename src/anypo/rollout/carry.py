"""T-PPO's partial rollouts: responses still unfinished when a step's generation window ends are
carried over and continued in later steps (their already-trained tokens masked), next to fresh prompts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from anypo.rollout.groups import Request, concat_batches
from anypo.rollout.parts import ROLLOUTS, RolloutPart
from anypo.types import PartConfig, RolloutBatch

__all__ = ["CARRIED_STEPS", "TPPOCarry", "TPPOCarryConfig"]

CARRIED_STEPS = "carried_steps"
"""Key of ``RolloutBatch.extras``: [N] int, how many earlier steps generated part of the row's response
(0: a fresh response; k: its first tokens come from k earlier windows and are masked)."""


@dataclass(frozen=True)
class TPPOCarryConfig(PartConfig):
    """T-PPO's length-restricted generation with partial responses carried across steps (reconstructed).

    Paper: T. Fan et al. (ByteDance Seed), "Truncated Proximal Policy Optimization",
    https://arxiv.org/abs/2506.15050. Only the abstract could be read and no code was found: each step
    generates up to a length window, responses still unfinished continue in later steps, and their
    advantages come from EGAE (:class:`anypo.advantages.EGAEAdvantage`). The mechanics below are our
    reconstruction (UNVERIFIED):

    * **Window.** A step generates at most ``W = sampling.max_new_tokens`` new tokens per row (the run's
      generation budget is the window).
    * **Carry.** A row the window cut (``truncated``) is *unfinished*: ``extras["unfinished"]`` is True,
      so EGAE gives it no outcome reward and bootstraps from the critic, and T-PPO's value loss leaves it
      out. Its prompt index and every response token so far (earlier windows' and this one's) go into
      the part's state (kept in every checkpoint).
    * **Continue.** The next step requests its continuation: ``Request(index, 1, prefix=tokens)``; the
      prefix is response context with ``response_mask`` 0 and old log-prob 0 (already trained in the
      step it was generated in, never again), and the engine continues from prompt + prefix with the
      current weights. The continuation's tokens are trained as usual; if it finishes, its reward
      scores the whole response (prefix + continuation) and EGAE credits it to the continuation's
      tokens, whose returns rest on that reward.
    * **Fixed batch.** The step trains exactly as many sequences as the sampler asked for
      (``sum`` of the requested group sizes, ``prompts_per_step * samples_per_prompt`` by default):
      carried rows take the *last* slots of the requested groups and the fresh samples of each drawn
      prompt fill the rest; a drawn prompt whose whole group is taken by carried rows gets no sample this
      step (``rollout/carry_unused_prompts``). With group sizes that shrink between steps, carried rows
      beyond the batch wait for the next step, oldest first.
    * **Groups.** The batch keeps the requested groups (``group_ids``, so mini-batches of whole groups
      are unchanged), but a group may hold carried rows of other prompts next to its fresh samples:
      this is per-sequence handling, right for T-PPO's critic-based advantages and wrong for group
      baselines, so the config check refuses this part with a group-relative part
      (``mixes_prompts_in_groups``). ``extras["prompt_index"]`` stays each row's own prompt.
    * **Limits.** ``max_carries``: a response may be carried over at most this many steps; cut again
      after that, it is final (truncated, scored as it is; ``rollout/carry_dropped_at_cap``).
      ``max_total_tokens``: the total response length over all windows; a continuation's window is cut
      to what is left of it, and a response that reaches it is final (truncated;
      ``rollout/carry_length_limit``). 0: ``W * (max_carries + 1)``.

    Deviations / choices (UNVERIFIED against T-PPO): the paper's per-step window and maximum length
    are not known here (its runs: Qwen2.5-32B, AIME); a carried response keeps the bootstrap it got in
    the step it was cut in (the advantages of its earlier tokens are never revised); the reward
    function sees the row's total length as ``num_tokens`` and the window as ``max_tokens`` (length
    shaping built on the window would misjudge carried responses); an unfinished row is still scored on
    its partial text by the task reward (in ``reward/*``; EGAE ignores it); ``extras["max_tokens"]`` is
    the total limit. Use with a sampler that keeps every draw (``uniform``): a sampler that drops rows
    after the part has carried them (dynamic sampling) would continue responses whose earlier tokens
    were never trained. Request ``insert`` texts are not kept for carried rows.

    Shapes: per row, ``extras["unfinished"]`` [N] bool, ``extras["carried_steps"]`` [N] int,
    ``extras["rollin_tokens"]`` [N] int (the carried prefix length).
    """

    max_carries: int = 3
    """Steps a response may be carried over (0: nothing is carried; every window cut is final)."""
    max_total_tokens: int = 0
    """Total response tokens over all windows (>= the window); 0: window * (max_carries + 1)."""

    def __post_init__(self) -> None:
        if self.max_carries < 0:
            raise ValueError(
                f"TPPOCarryConfig.max_carries must be >= 0 (0: nothing is carried), got {self.max_carries}"
            )
        if self.max_total_tokens < 0:
            raise ValueError(
                f"TPPOCarryConfig.max_total_tokens must be >= 0 (0: window * (max_carries + 1)), "
                f"got {self.max_total_tokens}"
            )

    @property
    def mixes_prompts_in_groups(self) -> bool:
        """Carried rows of other prompts share the slots of a group: group statistics mean nothing."""
        return True


@ROLLOUTS.register("tppo_carry", config=TPPOCarryConfig)
class TPPOCarry(RolloutPart):
    """T-PPO's carried partial responses (see :class:`TPPOCarryConfig`).

    State (``state_dict``): ``{"carry": [{"index": prompt index, "tokens": response tokens so far,
    "carried": steps carried so far}, ...]}``, the unfinished responses of the last step, oldest first.
    """

    cfg: TPPOCarryConfig

    def __init__(self, cfg: TPPOCarryConfig, groups):
        super().__init__(cfg, groups)
        self.window = int(groups.sampling.max_new_tokens)
        self.total = cfg.max_total_tokens or self.window * (cfg.max_carries + 1)
        if self.total < self.window:
            raise ValueError(
                f"TPPOCarryConfig.max_total_tokens ({cfg.max_total_tokens}) is below the window "
                f"sampling.max_new_tokens ({self.window}): set it >= {self.window}, or 0"
            )
        self.carry: list[dict[str, Any]] = []

    # ---- the step's batch ----
    def collect(self, requests: Sequence[Request], seed: int, step: int, group_offset: int = 0) -> RolloutBatch:
        sizes = [r.n for r in requests]
        take, waiting = self.carry[: sum(sizes)], self.carry[sum(sizes) :]
        carried_per_group, left = [0] * len(requests), len(take)
        for k in reversed(range(len(requests))):  # carried rows take the last slots
            carried_per_group[k] = min(sizes[k], left)
            left -= carried_per_group[k]
        # the rows in batch order: (request, group, carried entry or None, window of this request)
        plan: list[tuple[Request, int, dict[str, Any] | None, int]] = []
        it = iter(take)
        for k, r in enumerate(requests):
            fresh = r.n - carried_per_group[k]
            if fresh > 0:
                plan.append((dataclasses.replace(r, n=fresh), k, None, self.window))
            else:
                self.add("carry_unused_prompts", 1)
            for _ in range(carried_per_group[k]):
                e = next(it)
                plan.append((Request(e["index"], 1, "", tuple(e["tokens"])), k, e, self._window_for(e)))
        batch = self._generate(plan, seed)
        batch.group_ids = torch.tensor(
            [k for r, k, _, _ in plan for _ in range(r.n)], dtype=torch.long
        ) + group_offset  # fmt: skip
        carried = [0 if e is None else int(e["carried"]) for r, _, e, _ in plan for _ in range(r.n)]
        self.carry = waiting + self._settle(batch, carried)
        self.add("carry_in", len(take))
        self.add("carry_in_tokens", sum(len(e["tokens"]) for e in take))
        self.add("carry_fresh", sum(r.n for r, _, e, _ in plan if e is None))
        self.add("carry_waiting", len(waiting))
        return batch

    def _window_for(self, entry: dict[str, Any]) -> int:
        """New tokens a carried response may get this step: the window, or what is left of the total."""
        return min(self.window, self.total - len(entry["tokens"]))

    def _generate(self, plan: list[tuple[Request, int, dict[str, Any] | None, int]], seed: int) -> RolloutBatch:
        """The plan's rows, in plan order: one ``groups.collect`` per distinct window (the full window
        with ``seed``; a continuation with less of the total left gets its own call and seed)."""
        windows = sorted({w for *_, w in plan}, reverse=True)
        parts, order = [], {}  # order: plan position -> (call, first row in the call)
        for j, w in enumerate(windows):
            positions = [p for p, (*_, pw) in enumerate(plan) if pw == w]
            row = 0
            for p in positions:
                order[p] = (j, row)
                row += plan[p][0].n
            reqs = [plan[p][0] for p in positions]
            parts.append(self._collect_window(reqs, seed + 104_729 * j, w))
        offsets = [0]
        for b in parts[:-1]:
            offsets.append(offsets[-1] + b.num_seqs)
        index = [offsets[j] + row + i for p in range(len(plan)) for j, row in [order[p]] for i in range(plan[p][0].n)]
        batch = concat_batches(parts, self.groups.tokenizer.pad_token_id)
        return batch if len(parts) == 1 else batch.select(torch.tensor(index, dtype=torch.long))

    def _collect_window(self, reqs: list[Request], seed: int, window: int) -> RolloutBatch:
        if window == self.window:
            return self.groups.collect(reqs, seed, 0)
        saved = self.groups.sampling
        self.groups.sampling = dataclasses.replace(saved, max_new_tokens=window)
        try:
            return self.groups.collect(reqs, seed, 0)
        finally:
            self.groups.sampling = saved

    def _settle(self, batch: RolloutBatch, carried: list[int]) -> list[dict[str, Any]]:
        """Mark each row finished or unfinished (``extras``); return the entries carried to the next step."""
        out, unfinished, final_rewards = [], [], []
        new_tokens = batch.response_mask.sum(1).tolist()
        for row in range(batch.num_seqs):
            h, L = int(batch.extras["rollin_tokens"][row]), int(new_tokens[row])
            cut = bool(batch.truncated[row])
            keep = cut and carried[row] < self.cfg.max_carries and h + L < self.total
            if cut and not keep:
                self.add("carry_dropped_at_cap" if carried[row] >= self.cfg.max_carries else "carry_length_limit", 1)
            if keep:
                tokens = [int(t) for t in batch.response_ids[row, : h + L].tolist()]
                out.append(
                    {"index": int(batch.extras["prompt_index"][row]), "tokens": tokens, "carried": carried[row] + 1}
                )
            else:
                final_rewards.append(float(batch.rewards[row]))
            unfinished.append(keep)
        batch.extras["unfinished"] = unfinished
        batch.extras[CARRIED_STEPS] = carried
        batch.extras["max_tokens"] = [self.total] * batch.num_seqs
        self.add("carry_out", len(out))
        self.add("carry_out_tokens", sum(len(e["tokens"]) for e in out))
        self.add("carry_final", len(final_rewards))
        self.add("carry_final_reward_sum", sum(final_rewards))
        return out

    # ---- metrics and state ----
    def pop_metrics(self) -> dict[str, float]:
        """Counts of the step, and the means: ``carry_in_length_mean`` (tokens already generated of the
        continued responses), ``carry_out_length_mean`` (tokens so far of the responses carried to the
        next step), ``carry_final_reward_mean`` (reward of the responses that ended this step)."""
        m = super().pop_metrics()
        for name, total, count in (
            ("carry_in_length_mean", "carry_in_tokens", "carry_in"),
            ("carry_out_length_mean", "carry_out_tokens", "carry_out"),
            ("carry_final_reward_mean", "carry_final_reward_sum", "carry_final"),
        ):
            s, n = m.pop(f"rollout/{total}", 0.0), m.get(f"rollout/{count}", 0.0)
            if n:
                m[f"rollout/{name}"] = s / n
        return m

    def state_dict(self) -> dict[str, Any]:
        return {
            "carry": [{"index": e["index"], "tokens": list(e["tokens"]), "carried": e["carried"]} for e in self.carry]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.carry = [
            {"index": int(e["index"]), "tokens": [int(t) for t in e["tokens"]], "carried": int(e["carried"])}
            for e in state.get("carry", [])
        ]
