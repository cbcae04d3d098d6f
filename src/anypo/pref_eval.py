"""The oracle evaluation of a preference run: win rate against the initial policy, gold reward, KL, exploitability.

Shared by the online preference loop (every run) and the offline loop (with ``--eval-oracle.kind``),
so that a DPO run on fixed pairs and an online run are measured by the same numbers on the same
held-out prompts:

* ``eval/win_rate_vs_init``: the oracle's mean ``P(y_policy > y_initial)`` over the held-out prompts,
  one policy sample against one fixed sample of the initial policy each (ties 1/2);
* ``eval/gold`` (``eval/gold_init``): the oracle's gold score of the policy's (the initial policy's)
  samples: the task's reward, correctness for the intransitive oracle, the judge's score for a
  lexical judge;
* ``eval/proxy`` (``eval/proxy_init``), with a second oracle ``proxy`` (the reward a run trains
  against when another oracle is the gold: the online loop's training oracle, or the offline loop's
  ``--eval-proxy``): that oracle's score of the same samples, for over-optimisation plots (gold
  against proxy as the KL grows);
* ``eval/kl_ref``: ``mean_x [log pi(y|x) - log pi_1(y|x)]`` over the policy's samples at the
  evaluation temperature (1 by default): the k1 estimate of ``KL(pi || pi_1)``;
* on ``candidates`` fixed samples of the initial policy per prompt, the exact Nash equilibrium of the
  oracle's preference game (:func:`anypo.oracles.nash`) and the policy restricted to the candidates,
  ``q(y) ~ pi(y|x)``: ``eval/exploitability = max_y P(y > q) - 1/2`` and ``eval/nash_tv``.

The initial policy's samples (opponents and candidates) are drawn once, at the first evaluation, with
fixed seeds, so every evaluation of a run (and of a resumed run) faces the same opponents.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from anypo.engines.base import SamplingConfig
from anypo.oracles import exploitability, nash, tv_distance
from anypo.oracles.base import preference_matrices
from anypo.policy import response_logprobs
from anypo.tasks.base import stable_seed
from anypo.train_pref import _chunks, _pad
from anypo.types import RolloutBatch

__all__ = ["OracleEvaluation", "seq_logprobs"]


def seq_logprobs(
    model: torch.nn.Module, prompts: list[list[int]], responses: list[list[int]], pad_id: int, micro: int, pack: bool
) -> Tensor:
    """``[n]`` summed log-probs (temperature 1) of each response after its prompt, in micro-batches."""
    out = torch.zeros(len(responses), dtype=torch.float64)
    for chunk in _chunks(list(range(len(responses))), micro):
        p_ids, p_mask = _pad([prompts[i] for i in chunk], pad_id, left=True)
        r_ids, r_mask = _pad([responses[i] for i in chunk], pad_id, left=False)
        rb = RolloutBatch(
            response_mask=r_mask, group_ids=torch.arange(len(chunk)), rewards=torch.zeros(len(chunk)),
            prompt_ids=p_ids, prompt_mask=p_mask, response_ids=r_ids,
        )  # fmt: skip
        lp = response_logprobs(model, rb, 1.0, pack=pack).logprobs
        out[chunk] = (lp * r_mask).sum(-1).double()
    return out


class OracleEvaluation:
    """The evaluation of a policy against its initial weights under a preference oracle (module docstring).

    Args:
        model: the policy (its current weights are evaluated).
        initial: a frozen copy of the initial weights (the reference of ``eval/kl_ref``).
        policy_engine: an engine sampling from ``model``.
        initial_engine: a function returning an engine sampling from ``initial`` (built on first use).
        tokenizer, pad_id: the policy's tokenizer and its pad id.
        examples, prompt_ids: the held-out task examples (the oracle's gold needs them) and their
            tokenized prompts.
        oracle: the evaluation oracle.
        sampling: how evaluation responses are sampled (temperature 1: ``eval/kl_ref`` is the policy's KL).
        candidates: samples of the initial policy per prompt in the exploitability game (0: none).
        seed: the run's seed (the fixed seeds of every evaluation sample derive from it).
        micro_batch_size, pack: how the log-prob passes run.
        autocast: a function returning the loop's autocast context.
        proxy: a second oracle whose gold score of the same samples is logged as ``eval/proxy``; None: none.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        initial: torch.nn.Module,
        policy_engine: Any,
        initial_engine: Callable[[], Any],
        tokenizer: Any,
        pad_id: int,
        examples: list,
        prompt_ids: list[list[int]],
        oracle: Any,
        sampling: SamplingConfig,
        candidates: int,
        seed: int,
        micro_batch_size: int,
        pack: bool,
        autocast: Callable[[], AbstractContextManager],
        proxy: Any | None = None,
    ):
        self.model, self.initial = model, initial
        self.policy_engine, self.initial_engine = policy_engine, initial_engine
        self.tokenizer, self.pad_id = tokenizer, pad_id
        self.examples, self.prompt_ids = examples, prompt_ids
        self.oracle, self.sampling, self.candidates, self.seed = oracle, sampling, candidates, seed
        self.micro, self.pack, self.autocast = micro_batch_size, pack, autocast
        self.proxy = proxy
        self.cache: dict[str, Any] | None = None

    def _decode(self, g) -> tuple[list[list[int]], list[str]]:
        rows = [g.response_ids[r][g.response_mask[r].bool()].tolist() for r in range(g.response_ids.shape[0])]
        return rows, [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in rows]

    def build_cache(self) -> dict[str, Any]:
        """Samples of the initial policy on the held-out prompts (fixed seeds): one opponent per prompt
        for the win rate, and ``candidates`` distinct candidates per prompt with the oracle's preference
        matrix and its exact Nash equilibrium."""
        init = self.initial_engine()
        opp = init.generate(self.prompt_ids, 1, self.sampling, stable_seed("eval-opponent", self.seed))
        opp_texts = self._decode(opp)[1]
        cache: dict[str, Any] = {"opponent": opp_texts, "games": []}
        cache["gold_init"] = _nanmean(self.oracle.gold(self.examples, opp_texts).tolist())
        if self.proxy is not None:
            cache["proxy_init"] = _nanmean(self.proxy.gold(self.examples, opp_texts).tolist())
        if self.candidates > 0:
            g = init.generate(self.prompt_ids, self.candidates, self.sampling, stable_seed("eval-cands", self.seed))
            cands: list[dict[tuple[int, ...], str]] = [{} for _ in self.prompt_ids]
            for r in range(g.response_ids.shape[0]):
                ids = tuple(g.response_ids[r][g.response_mask[r].bool()].tolist())
                cands[int(g.prompt_index[r])].setdefault(
                    ids, self.tokenizer.decode(list(ids), skip_special_tokens=True)
                )
            matrices = preference_matrices(self.oracle, self.examples, [list(c.values()) for c in cands])
            for b, (cand, P) in enumerate(zip(cands, matrices, strict=True)):
                ids = list(cand)
                if len(ids) < 2 or bool(torch.isnan(P).any()):
                    continue  # a one-candidate game is trivially at equilibrium; an unjudged one has no matrix
                cache["games"].append({"prompt": b, "ids": [list(i) for i in ids], "P": P.tolist(),
                                       "nash": [float(v) for v in nash(P.tolist())]})  # fmt: skip
        return cache

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        """The ``eval/*`` numbers of the policy's current weights (empty without held-out prompts)."""
        if not self.prompt_ids:
            return {}
        if self.cache is None:
            self.cache = self.build_cache()
        cache = self.cache
        was = self.model.training
        self.model.eval()
        try:
            with self.autocast():
                g = self.policy_engine.generate(
                    self.prompt_ids, 1, self.sampling, stable_seed("eval-policy", self.seed)
                )
            rows, texts = self._decode(g)
            p = self.oracle.prob(self.examples, texts, cache["opponent"])
            out = {
                "eval/win_rate_vs_init": _nanmean(p.tolist()),
                "eval/gold": _nanmean(self.oracle.gold(self.examples, texts).tolist()),
                "eval/gold_init": cache["gold_init"],
                "eval/response_tokens": sum(map(len, rows)) / max(len(rows), 1),
            }
            if self.proxy is not None:
                out["eval/proxy"] = _nanmean(self.proxy.gold(self.examples, texts).tolist())
                out["eval/proxy_init"] = cache["proxy_init"]
            with self.autocast():
                lp = seq_logprobs(self.model, self.prompt_ids, rows, self.pad_id, self.micro, self.pack)
                lp0 = seq_logprobs(self.initial, self.prompt_ids, rows, self.pad_id, self.micro, self.pack)
            out["eval/kl_ref"] = float((lp - lp0).mean())
            if cache["games"]:
                prompts = [self.prompt_ids[gm["prompt"]] for gm in cache["games"] for _ in gm["ids"]]
                resp = [ids for gm in cache["games"] for ids in gm["ids"]]
                with self.autocast():
                    clp = seq_logprobs(self.model, prompts, resp, self.pad_id, self.micro, self.pack)
                expl, tv, start = [], [], 0
                for gm in cache["games"]:
                    k = len(gm["ids"])
                    q = torch.softmax(clp[start : start + k], 0).tolist()
                    start += k
                    expl.append(exploitability(gm["P"], q))
                    tv.append(tv_distance(q, gm["nash"]))
                out["eval/exploitability"] = sum(expl) / len(expl)
                out["eval/nash_tv"] = sum(tv) / len(tv)
                out["eval/games"] = float(len(expl))
        finally:
            self.model.train(was)
        return finite_gold(out)


def finite_gold(m: dict[str, float]) -> dict[str, float]:
    """``m`` without gold or proxy keys that are NaN (an oracle without a gold score, e.g. a judge)."""
    return {k: v for k, v in m.items() if not (("gold" in k or "proxy" in k) and math.isnan(v))}


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan
