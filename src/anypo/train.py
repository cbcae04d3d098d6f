"""The online RL loop, top to bottom: prompts -> samples -> rewards -> advantages -> policy update.

The loop never branches on a method's name. It asks the chosen parts what they need
(``AlgoConfig.needs("ref_logprobs")`` and so on) and calls them through their registries.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path

import torch

from anypo import checkpoint, models, registry
from anypo.config import TrainConfig
from anypo.engines import make_engine, resolve_engine_precision
from anypo.evaluate import mean_pass_at_k, pass_at_k_by_difficulty
from anypo.metrics import MetricAccumulator, mean_over_steps
from anypo.ops import masked_mean, masked_sum
from anypo.policy import Critic, Reference, batched_logprobs, micro_batches, response_logprobs
from anypo.rollout import GroupRollout, Request, concat_batches, drop_reward_errors
from anypo.rollout.old_pass import StepAnchor, behaviour_pass, fill_proxies, old_pass_request
from anypo.rollout.replay import StaleRollouts
from anypo.rollout.stats import advantage_metrics, first_groups, first_samples, rollout_metrics, warn_reward_errors
from anypo.run import TrainingError, run_loop
from anypo.runs import peak_rss_gb
from anypo.types import LossOutput, LossScale, MetricReduction, PolicyOutput, RolloutBatch
from anypo.validate import check_train_config

log = logging.getLogger(__name__)

__all__ = ["PROVIDED_NEEDS", "Context", "TrainingError", "train"]

# What this loop provides to a part that declares needs_<what> (the config check refuses any other need);
# ON_POLICY_NEEDS: not under a replay schedule (the tempered and proxy passes need the current weights)
PROVIDED_NEEDS = frozenset(
    {"ref_logprobs", "values", "entropy", "logits", "rollout_logprobs", "greedy_rewards", "whole_minibatch"}
    | {"minibatch_prepare", "old_tempered_logprobs", "old_mean_logprobs", "old_proxy_logprobs", "old_full_logprobs"}
    | {"recomputed_old_logprobs", "bootstrap_values", "old_logprobs_before_update"}
)
_ENGINE_GAP = "rollout/engine_logprob_abs_diff"  # mean |engine - learner| log-prob of the sampled tokens
ON_POLICY_NEEDS = frozenset({"old_tempered_logprobs", "old_proxy_logprobs", "old_full_logprobs"})


def train(cfg: TrainConfig, resume: str | Path | None = None) -> Path:
    """Run ``cfg`` (or continue the run in ``resume``) and return the run directory.

    The whole config is checked before anything is loaded (``anypo.validate``); the run directory,
    checkpoints, logs, budgets, Ctrl-C and the report are the shared scaffold's (``anypo.run``).
    """
    check_train_config(cfg)
    return run_loop(cfg, Context.build, resume)


class Context:
    """Everything one run holds: models, optimizer, parts, data. Built once, restored on resume."""

    @classmethod
    def build(cls, cfg: TrainConfig, run_dir: Path) -> Context:
        from anypo.tasks import get_task
        from anypo.trainer_setup import make_optimizer, make_reward, make_scheduler, make_verifier, tokenize_prompts

        self = cls()
        self.cfg, self.run_dir, self.algo = cfg, run_dir, cfg.algo
        self.tokenizer = models.load_tokenizer(cfg.model.name)
        self.model = models.load_model(cfg.model, seed=cfg.seed)
        self.model.train()
        self.task = get_task(cfg.task)
        limit = cfg.max_prompt_tokens
        self.train_examples, self.prompt_ids, self.skipped_prompts = tokenize_prompts(
            self.task.train_examples(), self.tokenizer, limit
        )
        self.heldout, self.heldout_ids, _ = tokenize_prompts(self.task.heldout_examples(), self.tokenizer, limit)
        self.reward = make_reward(self.task, self.algo.reward_shaping, cfg.rewards)
        self.verify, _ = make_verifier(self.task)
        self.correct_name = self.reward.names[0]  # the first term is the correctness check (reward/accuracy)
        self.engine_precision, why = resolve_engine_precision(cfg)
        if cfg.engine_precision == "auto":
            log.info("engine precision %s (%s)", self.engine_precision, why)
        self.engine = make_engine(cfg.engine, self.model, self.tokenizer, self.engine_precision)
        self.groups = GroupRollout(
            self.engine,
            self.tokenizer,
            self.prompt_ids,
            self._sample_for,
            self.reward,
            cfg.sampling,
            cfg.samples_per_prompt,
            self.correct_name,
            examples=self.train_examples,
        )
        # how drawn prompts become a batch: plain groups, or hints / roll-ins / drafts / replay (anypo.rollout.parts)
        rollout_cfg = self.algo.rollout or registry.get("rollout", "groups")[1]()
        self.rollout_part = registry.registry("rollout").fn_for(rollout_cfg)(rollout_cfg, self.groups)
        self.advantage_fn = registry.registry("advantage").fn_for(self.algo.advantage)
        self.loss_fn = registry.registry("policy_loss").fn_for(self.algo.policy_loss)
        self.reg_fns = [registry.registry("regularizer").fn_for(r) for r in self.algo.regularizers]
        sampler_cfg = self.algo.sampler or registry.get("sampler", "uniform")[1]()
        self.sampler = registry.registry("sampler").fn_for(sampler_cfg)(
            sampler_cfg, len(self.prompt_ids), cfg.prompts_per_step, cfg.seed
        )
        self.max_draws = int(getattr(sampler_cfg, "max_draws", 1))
        self.reference = None
        if self.algo.needs("ref_logprobs"):
            self.reference = Reference(self.model, run_dir / "reference.safetensors" if cfg.reference_offload else None)
        params = [p for p in self.model.parameters() if p.requires_grad]
        # cfg.optimizer (AdamW by default); fused: AdamW's one kernel per parameter, no foreach temporaries
        self.optimizer = make_optimizer(params, cfg, fused=True)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.critic = self.critic_opt = None
        if self.algo.needs("values"):
            self.critic = Critic(self.model, self.algo.critic, seed=cfg.seed)  # heads: algo.critic (CriticConfig)
            self.critic_opt = torch.optim.AdamW(
                self.critic.parameters(), lr=cfg.critic_lr, weight_decay=cfg.weight_decay
            )
            self.value_fn = registry.registry("value_loss").fn_for(self.algo.value_loss)
        self.autocast = _autocast(cfg.precision)
        # MDPO's pi_k: the step-start weights, run per micro-batch for their full distributions
        self.anchor = StepAnchor(self.model) if self.algo.needs("old_full_logprobs") else None
        # state of the parts that keep one across steps, by slot; handed to them as batch.part_state
        self.part_states = {slot: p.init_state() for slot, p in self.algo.stateful_parts().items()}
        # stale rollouts: a queue of batches generated by older weights (None: on-policy, no queue)
        schedule = self.algo.replay_schedule()
        self.stale = StaleRollouts(schedule, cfg.steps, self._generate_stale) if schedule.active else None
        self._errors_seen = 0
        self._warned_reward_errors = False
        self.mid_update = False  # True while the weights change (the scaffold resets it once a step is logged)
        self.current_step = 0  # the step being trained
        return self

    def _sample_for(self, index: int, text: str, num_tokens: int, truncated: bool):
        return self.train_examples[index].to_sample(text, num_tokens, self.cfg.sampling.max_new_tokens, truncated)

    def step(self, step: int) -> tuple[RolloutBatch, dict[str, float]]:
        """One training step: rollout, then ``learn``; the engine gets the new weights. Returns the batch and metrics."""
        t0 = time.perf_counter()
        # ---- ALGO LOGIC: rollout (with the sampler's filter, e.g. DAPO dynamic sampling); under a
        # replay schedule, the batch an older policy generated for this step (with its log-probs) ----
        with self.autocast():
            if self.stale is None:
                batch, m = self.rollout(step)
            else:
                batch, m, now = self.stale.next(step)
                m.update(now)
        t_gen = time.perf_counter() - t0
        m = self.learn(batch, m, step)
        t = time.perf_counter()
        if m["train/optimizer_steps"] > 0:
            self.engine.load_weights(self.model.state_dict())
        m["time/train_s"] += time.perf_counter() - t  # the engine's weight load counts as training time
        n_tokens = float(batch.response_mask.sum())
        # under a replay schedule the step generates other batches than the one it trains on
        gen_tokens = m["rollout/generated_tokens"] if self.stale is not None else n_tokens
        m.update(step_metrics(t0, t_gen, gen_tokens, n_tokens * self.algo.ppo_epochs, m["time/train_s"]))
        return batch, m

    def learn(self, batch: RolloutBatch, m: dict[str, float], step: int) -> dict[str, float]:
        """Everything after the rollout on ``batch``: the passes the parts need, the advantages, the
        proxies, then ``update``. Returns ``m`` updated with their metrics and ``time/prepare_s``, ``time/train_s``."""
        # ---- ALGO LOGIC: what the parts need (old / reference log-probs, values), then advantages ----
        t1 = time.perf_counter()
        if batch.num_seqs:
            with self.autocast():
                self.fill_needs(batch, m, behaviour=self.stale is None)
            batch.part_metrics = {}  # the advantage part's diagnostics (batch.add_metric), logged as advantage/*
            batch.advantages = self.advantage_fn(self._with_state(batch, "advantage"), self.algo.advantage)
            m.update(advantage_metrics(batch))
            batch.part_state = batch.part_metrics = None
            self.fill_proxy(batch)
        m["time/prepare_s"] = time.perf_counter() - t1
        # ---- ALGO LOGIC: policy (and critic) update ----
        t2 = time.perf_counter()
        self.mid_update = True  # the weights change from here until the scaffold has logged the step
        self.current_step = step  # seeds the per-mini-batch random choices (prepare_minibatch)
        m.update(self.update(batch))
        m["time/train_s"] = time.perf_counter() - t2
        return m

    # ---- rollout ----
    def rollout(self, step: int) -> tuple[RolloutBatch, dict[str, float]]:
        """Draw prompts until the sampler has kept ``prompts_per_step`` groups (or ``max_draws`` is hit).

        The sampler picks the prompts and their group sizes; the rollout part turns them into a scored
        batch (plain groups, or with hints, roll-ins, drafts, replayed answers). Every token the engine
        generates for the step counts in ``rollout/generated_tokens``, re-scoring passes included."""
        kept, n_groups, draws, scored = [], 0, 0, []
        n_generated = n_failed = 0
        start_tokens = self.groups.generated_tokens
        m_rescore = self.rescore(step)
        while n_groups < self.cfg.prompts_per_step and draws < self.max_draws:
            idx = self.sampler.next_prompts(step)
            sizes = self.sampler.group_sizes(idx, self.cfg.samples_per_prompt)
            b = self.rollout_part.collect(
                [Request(i, n) for i, n in zip(idx, sizes, strict=True)],
                seed=self.cfg.seed * 1_000_003 + step * 101 + draws,
                step=step,
                group_offset=draws * len(idx),
            )
            n_generated += b.num_seqs
            b, failed = drop_reward_errors(b)
            n_failed += failed
            self.sampler.observe(b)
            scored.append(b)
            keep = self.sampler.keep(b)
            if bool(keep.any()):
                kept.append(b.select(keep.nonzero().flatten()))
                n_groups += int(torch.unique(kept[-1].group_ids).numel())
            draws += 1
        if not kept:  # nothing kept after max_draws: train on the last draw rather than stall
            kept = [scored[-1]]
        batch = concat_batches(kept, self.tokenizer.pad_token_id)
        batch = first_groups(batch, self.cfg.prompts_per_step)
        tokens = self.groups.generated_tokens - start_tokens
        greedy: dict[str, float] = {}
        if self.algo.needs("greedy_rewards") and batch.num_seqs:  # ReMax's baseline: never trained on
            batch.greedy_rewards, greedy = self.groups.greedy_rewards(batch, seed=self.cfg.seed + step)
            tokens += int(greedy["rollout/greedy_tokens"])
        errors, self._errors_seen = self.reward.num_errors - self._errors_seen, self.reward.num_errors
        m = rollout_metrics(batch, concat_batches(scored, self.tokenizer.pad_token_id), draws)
        m.update(greedy | m_rescore | self.rollout_part.pop_metrics())
        m.update({f"sampler/{k}": v for k, v in self.sampler.pop_metrics().items()})
        m["reward/errors"] = float(errors)
        m["reward/error_samples"] = float(n_failed)
        m["rollout/generated_tokens"] = float(tokens)
        m["data/skipped_long_prompts"] = float(self.skipped_prompts)
        if not self._warned_reward_errors:  # once per run
            self._warned_reward_errors = warn_reward_errors(
                step, n_failed, n_generated, self.cfg.reward_error_warn_frac
            )
        return batch, m

    def rescore(self, step: int) -> dict[str, float]:
        """Re-score the prompts the sampler asks for before ``step``'s draw (MMR1's periodic pass over the
        training set): plain groups of ``n`` samples, 16 prompts per engine call, never trained on."""
        idx, n = self.sampler.rescore_prompts(step)
        if not idx:
            return {}
        start, size, parts = self.groups.generated_tokens, 16, []
        for k in range(0, len(idx), size):
            seed = (self.cfg.seed * 1_000_003 + step * 101) * 7 + 1_000_000_007 + k
            parts.append(drop_reward_errors(self.groups.collect([Request(i, n) for i in idx[k : k + size]], seed))[0])
        self.sampler.rescore(concat_batches(parts, self.tokenizer.pad_token_id))
        return {
            "rollout/rescored_prompts": float(len(idx)),
            "rollout/rescore_tokens": float(self.groups.generated_tokens - start),
        }

    def _generate_stale(self, step: int) -> tuple[RolloutBatch, dict[str, float]]:
        """Step ``step``'s batch, generated now (an earlier step) with the behaviour log-probs of these weights."""
        batch, m = self.rollout(step)
        if batch.num_seqs:
            self.fill_behaviour(batch, m)
        return batch, m

    def fill_needs(self, batch: RolloutBatch, m: dict[str, float], behaviour: bool = True) -> None:
        """Fill what the parts declared they need: the behaviour log-probs (unless they were filled when
        a stale batch was generated), reference log-probs, values (and, for ``needs_bootstrap_values``, the
        critic's value after each response's last token, from the same pass)."""
        cfg, micro = self.cfg, self.cfg.micro_batch_size
        if behaviour:
            self.fill_behaviour(batch, m)
        if self.reference is not None:
            batch.ref_logprobs = self.reference.logprobs(batch, cfg.sampling.temperature, micro, cfg.pack_prompts)
        if self.critic is not None and self.algo.needs("bootstrap_values"):  # V(s_l) after each response (EGAE)
            batch.values, batch.extras["bootstrap_values"] = self.critic.values_and_end(batch, micro)
        elif self.critic is not None:
            batch.values = self.critic.values(batch, micro)

    def fill_behaviour(self, batch: RolloutBatch, m: dict[str, float]) -> None:
        """The old (behaviour) log-probs, with the weights that generated ``batch``: the engine's, or
        recomputed by the learner when off-policy, when a part ``needs_rollout_logprobs`` or when the
        engine's are not the policy's (``logprobs_exact``); the engine's are then kept as
        ``rollout_logprobs``. In that last case, on-policy, the learner's pass is skipped unless a part
        reads them before the update (``needs_old_logprobs_before_update``): ``old_logprobs`` is None
        until the loss, which takes them from its own forward (``_micro_loss``)."""
        cfg, micro = self.cfg, self.cfg.micro_batch_size
        # under a replay schedule a batch may be trained after updates it did not see: its old log-probs
        # must be the generating weights', recorded now, never the training forward's
        on_policy = self.algo.on_policy(cfg.prompts_per_step) and self.stale is None
        # an engine whose log-probs are not the contract's for these sampling settings (vLLM with
        # top-k / top-p, the bf16 engine) cannot stand in for the policy's, even on-policy; under bf16
        # autocast the cached decode and the packed training forward round differently, so the ratio
        # of the first update would not be 1 either
        exact = getattr(self.engine, "logprobs_exact", lambda _s: True)(cfg.sampling) and cfg.precision == "fp32"
        # a rollout correction (TIS, IcePop) compares the engine's log-probs with the learner's: both needed
        forced = not on_policy or cfg.recompute_old_logprobs or self.algo.needs("rollout_logprobs")
        forced = forced or self.algo.needs("recomputed_old_logprobs")  # replayed rows of older weights
        from_forward = not exact and not forced and not self.algo.needs("old_logprobs_before_update")
        recompute = (forced or not exact) and not from_forward
        # the same no-grad forward gives what parts declare of the behaviour policy (needs_old_*)
        request = old_pass_request(self.algo, self.part_states, logprobs=recompute)
        out = behaviour_pass(self.model, batch, cfg.sampling.temperature, micro, cfg.pack_prompts, request)
        if recompute:
            batch.rollout_logprobs = batch.old_logprobs  # the engine's, for rollout corrections
            batch.old_logprobs = out.pop("logprobs")
            diff = (batch.rollout_logprobs - batch.old_logprobs).abs()
            m[_ENGINE_GAP] = float(masked_mean(diff, batch.response_mask))
        elif from_forward:  # the one update of this batch is its training forward's own (ratio 1)
            batch.rollout_logprobs, batch.old_logprobs = batch.old_logprobs, None
        batch.extras.update(out)  # DCPO's tempered log-probs, ROVER's mean log-probs

    def fill_proxy(self, batch: RolloutBatch) -> None:
        """After the advantages: the proxy log-probs a part declares (``needs_old_proxy_logprobs``, Lp-Reg)
        at the positions it chooses, from a no-grad forward of the behaviour policy (refused under replay)."""
        cfg = self.cfg
        with self.autocast():
            fill_proxies(
                self.model, batch, self.algo.parts(), cfg.sampling.temperature, cfg.micro_batch_size, cfg.pack_prompts
            )

    # ---- update ----
    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """``ppo_epochs`` passes over the batch, each one optimizer step per mini-batch of whole groups.

        A pass splits a seeded permutation of the batch's groups into mini-batches of
        ``algo.minibatch_prompts`` groups (one mini-batch when None), so the samples of a prompt are
        always in the same optimizer step: the group baseline cancels inside the step and a
        token-mean is a mean over whole groups. Each mini-batch is normalised by its own global
        counts, with the generation budget ``max_new_tokens`` as the constant length of Dr. GRPO's
        ``seq_mean_token_sum_norm``. A part that selects tokens over a whole mini-batch gets each one
        first (``prepare_minibatch``), with a seed from (run seed, step, mini-batch index).
        """
        algo = self.algo
        gen = torch.Generator().manual_seed(self.cfg.seed + 7919 * self.scheduler.last_epoch)
        groups = torch.unique(batch.group_ids)  # [K] sorted
        size = algo.minibatch_prompts or max(len(groups), 1)
        done, reductions, bad, no_signal = [], {}, 0, 0
        fresh = self.stale is None  # the weights are those of old_logprobs until the first optimizer step
        if self.anchor is not None:
            self.anchor.sync(self.model)
        index = 0
        for _ in range(algo.ppo_epochs if batch.num_seqs else 0):
            order = groups[torch.randperm(len(groups), generator=gen)] if size < len(groups) else groups
            for chunk in order.split(size):
                idx = torch.isin(batch.group_ids, chunk).nonzero().flatten()
                mini = batch.select(idx)
                mini.loss_scale = LossScale(
                    num_tokens=float(mini.response_mask.sum()),
                    num_seqs=float(mini.num_seqs),
                    norm_length=float(self.cfg.sampling.max_new_tokens),
                )
                self.prepare(mini, (self.cfg.seed * 1_000_003 + self.current_step) * 1_009 + index, fresh)
                index += 1
                metrics = self._minibatch_step(mini, reductions)
                if metrics is None:
                    bad += 1
                    continue
                stepped = not metrics.pop("train/no_signal")
                fresh, no_signal = fresh and not stepped, no_signal + int(not stepped)
                done.append(metrics)
        out = mean_over_steps(done, reductions)
        out["train/skipped_updates"] = float(bad)  # non-finite loss or gradient: no weight change
        out["train/skipped_no_signal"] = float(no_signal + (0 if batch.num_seqs else 1))  # zero gradient
        out["train/optimizer_steps"] = float(len(done) - no_signal)
        out["train/lr"] = self.scheduler.get_last_lr()[0]
        return out

    def prepare(self, mini: RolloutBatch, seed: int, fresh: bool) -> None:
        """Let the parts that select tokens over the whole mini-batch (``needs_minibatch_prepare``) write
        their selections into ``mini.extras``, from the log-probs of this optimizer step's weights:
        ``old_logprobs`` while ``fresh`` (no step taken since they were computed), else a no-grad pass."""
        cfg, parts = self.cfg, [p for p in self.algo.parts() if getattr(p, "needs_minibatch_prepare", False)]
        lp = mini.old_logprobs
        if parts and not fresh:
            with self.autocast():
                lp = batched_logprobs(
                    self.model, mini, cfg.sampling.temperature, cfg.micro_batch_size, cfg.pack_prompts
                )
        for part in parts:
            part.prepare_minibatch(mini, lp, seed)

    def _minibatch_step(self, mini: RolloutBatch, reductions: dict[str, MetricReduction]) -> dict[str, float] | None:
        """One optimizer step on ``mini``; None (and no weight change) if the loss or a gradient is not
        finite. A mini-batch whose policy gradient is exactly zero (every advantage 0 and no
        regularizer gradient) takes no AdamW step: its momentum would still move the weights."""
        cfg, algo = self.cfg, self.algo
        self._zero_grad()
        acc = MetricAccumulator()
        times = {"time/forward_s": 0.0, "time/backward_s": 0.0}
        clock, scale, finite = time.perf_counter, mini.loss_scale, True
        for micro in self._micro_batches(mini):
            t = clock()
            with self.autocast():  # the backward runs outside autocast, as recommended
                if micro is None:  # a pass that only keeps a learner group's collectives in step: zero gradient
                    filler = mini.select(torch.arange(1)).trimmed()
                    out = response_logprobs(self.model, filler, cfg.sampling.temperature, pack=cfg.pack_prompts)
                    loss, parts = out.logprobs.float().sum() * 0.0, []
                else:
                    out, parts = self._micro_loss(micro)
                    loss = sum((p.loss.float() for p in parts), torch.zeros(()))
            finite = finite and bool(torch.isfinite(loss))
            if not finite and not self.lockstep:
                break  # the step is skipped: no backward, no further micro-batch
            t, times["time/forward_s"] = clock(), times["time/forward_s"] + clock() - t
            self._backward(loss)
            times["time/backward_s"] += clock() - t
            if micro is None:
                continue
            tok_share = float(micro.response_mask.sum()) / max(scale.num_tokens, 1.0)
            seq_share = micro.num_seqs / max(scale.num_seqs, 1.0)
            for p in parts:
                for k, v in p.metrics.items():
                    acc.add(k, float(v), p.reduction(k), tok_share, seq_share)
            if micro.extras.get(_ENGINE_GAP) is not None:  # old log-probs from this forward: the engine's gap
                acc.add(
                    _ENGINE_GAP,
                    float(micro.extras[_ENGINE_GAP]) / max(scale.num_tokens, 1.0),
                    "sum",
                    tok_share,
                    seq_share,
                )
            if out.entropy is not None and not any("policy/entropy" in p.metrics for p in parts):
                ent = float(masked_sum(out.entropy.detach(), micro.mask)) / max(scale.num_tokens, 1.0)
                acc.add("policy/entropy", ent, "sum", tok_share, seq_share)
            acc.add("loss/total", float(loss.detach()), "sum", tok_share, seq_share)
        t = clock()
        if not self._all_finite(finite):
            self._zero_grad()
            return None
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        critic_norm = None
        if self.critic is not None:
            critic_norm = float(torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm))
        if not math.isfinite(grad_norm) or (critic_norm is not None and not math.isfinite(critic_norm)):
            self._zero_grad()
            return None
        no_signal = grad_norm == 0.0
        if not no_signal:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # free the gradients now: rollouts and reference passes need none
        with warnings.catch_warnings():  # the schedule follows planned steps, taken or skipped for no signal
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step\\(\\)` before", UserWarning)
            self.scheduler.step()
        if self.critic_opt is not None:
            self.critic_opt.step()
            self.critic_opt.zero_grad(set_to_none=True)
        out_m, reds = self._combine_metrics(acc)
        for k, red in reds.items():
            reductions.setdefault(k, red)
        out_m.update(times)
        out_m["train/grad_norm"] = grad_norm
        if critic_norm is not None:
            out_m["value/grad_norm"] = critic_norm
        out_m["time/optimizer_s"] = clock() - t
        for slot, part in algo.stateful_parts().items():  # once per optimizer step, with its metrics
            part.update_state(self.part_states[slot], out_m)
        out_m["train/no_signal"] = float(no_signal)
        return out_m

    def _micro_loss(self, micro: RolloutBatch) -> tuple[PolicyOutput, list[LossOutput]]:
        """The forward of one micro-batch and the parts' losses on it (policy loss, regularizers, value loss)."""
        cfg, algo = self.cfg, self.algo
        if self.anchor is not None:
            self.anchor.fill(micro, cfg.sampling.temperature, cfg.pack_prompts)
        out = response_logprobs(
            self.model, micro, cfg.sampling.temperature, entropy=cfg.log_entropy or algo.needs("entropy"),
            logits=algo.needs("logits"), entropy_grad=algo.needs("entropy"), pack=cfg.pack_prompts,
        )  # fmt: skip
        if micro.old_logprobs is None:  # on-policy with an inexact engine (fill_behaviour): this forward's
            micro.old_logprobs = (out.logprobs.detach().float() * micro.response_mask).to(micro.rewards.dtype)
            if micro.rollout_logprobs is not None:
                gap = (micro.rollout_logprobs - micro.old_logprobs).abs()
                micro.extras[_ENGINE_GAP] = masked_sum(gap, micro.response_mask)
        parts = [self.loss_fn(out, self._with_state(micro, "policy_loss"), algo.policy_loss)]
        for i, (fn, rcfg) in enumerate(zip(self.reg_fns, algo.regularizers, strict=True)):
            parts.append(fn(out, self._with_state(micro, f"regularizers.{i}"), rcfg))
        if self.critic is not None:
            v = self.critic(micro)
            parts.append(self.value_fn(v, self._with_state(micro, "value_loss"), algo.value_loss))
        return out, parts

    # What a learner group (anypo.distributed.learner) changes in a mini-batch step; here, one process.
    lockstep = False  # True: every micro-batch pass runs even after a non-finite loss (collectives in every pass)

    def _micro_batches(self, mini: RolloutBatch) -> list[RolloutBatch | None]:
        """The passes of ``mini`` this process runs: micro-batches carrying the mini-batch's global counts,
        so their losses sum to the mini-batch loss (None: a zero-loss pass, for a group's ranks)."""
        size = mini.num_seqs if self.algo.needs("whole_minibatch") else self.cfg.micro_batch_size  # DRPO's scope
        return [micro for _, micro in micro_batches(mini, size)]

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _all_finite(self, finite: bool) -> bool:
        """Whether every process's losses were finite (one process: its own flag)."""
        return finite

    def _combine_metrics(self, acc: MetricAccumulator) -> tuple[dict[str, float], dict[str, MetricReduction]]:
        """The mini-batch's metrics and their reductions (one process: its own accumulator's)."""
        values = acc.result()
        return values, {k: acc.reduction(k) for k in values}

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.critic_opt is not None:
            self.critic_opt.zero_grad(set_to_none=True)

    def _with_state(self, batch: RolloutBatch, slot: str) -> RolloutBatch:
        """``batch`` carrying the state of the part in ``slot`` (None for a part without one)."""
        batch.part_state = self.part_states.get(slot)
        return batch

    # ---- evaluation, checkpoints, logging ----
    def evaluate(self) -> dict[str, float]:
        """pass@k on the held-out split with the current weights, overall and per ``meta["difficulty"]`` level."""
        from anypo.evaluate import evaluate as run_eval

        cfg = self.cfg
        ids = self.heldout_ids[: cfg.eval_prompts]

        def score(i: int, text: str, n_tok: int, trunc: bool) -> float:
            return self.verify(self.heldout[i], text)

        with self.autocast():
            rewards, _ = run_eval(
                self.engine, self.tokenizer, ids, score, cfg.eval_samples, cfg.eval_sampling, seed=cfg.seed + 12345
            )
        correct = [[r >= 1.0 for r in row] for row in rewards]
        ks = sorted({1, cfg.eval_samples})
        out = {f"eval/pass@{k}": v for k, v in mean_pass_at_k(correct, ks).items()}
        levels = [ex.meta.get("difficulty") for ex in self.heldout[: len(ids)]]  # graded tasks; else nothing
        return out | pass_at_k_by_difficulty(correct, levels, ks)

    # ---- what the run scaffold (anypo.run) asks of a loop ----
    def train_step(self, step: int) -> tuple[dict[str, float], list[dict]]:
        """One step for the scaffold: its metrics and the first ``log_samples`` completions."""
        batch, m = self.step(step)
        return m, first_samples(batch, self.cfg.log_samples)

    def checkpoint_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        tensors = {"policy": checkpoint.trainable_state(self.model)}
        if self.critic is not None:
            tensors["critic"] = checkpoint.trainable_state(self.critic)
        return tensors

    def checkpoint_state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "critic_optimizer": self.critic_opt.state_dict() if self.critic_opt else None,
        }

    def step_state(self) -> dict:
        state = {"sampler": self.sampler.state_dict(), "part_states": self.part_states}
        state["rollout"] = self.rollout_part.state_dict()  # e.g. a replay buffer
        if self.stale is not None:
            state["replay"] = self.stale.state_dict()  # the queued batches (shared, never copied)
        return state

    def load_checkpoint(self, tensors: dict, state: dict) -> None:
        self.model.load_state_dict(tensors["policy"], strict=False)
        if self.critic is not None:
            self.critic.load_state_dict(tensors["critic"], strict=False)
            self.critic_opt.load_state_dict(state["critic_optimizer"])
        # a distributed run's checkpoint names the parameters (anypo.distributed): either form loads here
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer.load_state_dict(checkpoint.optimizer_state_by_index(state["optimizer"], names))
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.rollout_part.load_state_dict(state.get("rollout", {}))
        saved = state.get("part_states", {})
        self.part_states = {
            slot: saved[slot] if slot in saved else part.init_state()
            for slot, part in self.algo.stateful_parts().items()
        }
        if self.stale is not None:
            self.stale.load_state_dict(state["replay"])
        self._errors_seen = self.reward.num_errors  # the runner's count restarts with the process
        self.engine.load_weights(self.model.state_dict())  # an engine with its own copy must sample from these

    def describe(self) -> str:
        cfg = self.cfg
        method = f"Preset `{cfg.preset}`" if cfg.preset else f"Policy loss `{type(cfg.algo.policy_loss).__name__}`"
        return (
            f"{method} on task `{cfg.task.name}`, model `{cfg.model.name}`: up to {cfg.steps} steps of "
            f"{cfg.prompts_per_step} prompts x {cfg.samples_per_prompt} samples, lr {cfg.lr}"
            + (", sampling matmuls in bfloat16" if self.engine_precision == "bf16" else "")
            + "."
        )

    def export(self, out: Path) -> None:
        from anypo.trainer_setup import export_final

        export_final(self.model, self.tokenizer, out)

    def close(self) -> None:
        if self.reference is not None and self.reference.path is not None:
            self.reference.path.unlink(missing_ok=True)  # rebuilt from the initial weights on --resume


# ---- SCAFFOLD: helpers ----
def step_metrics(t0: float, t_gen: float, gen_tokens: float, train_tokens: float, t_train: float) -> dict[str, float]:
    """A step's wall time (from ``t0``), generation and training throughput, and peak memory."""
    return {
        "time/generate_s": t_gen,
        "time/step_s": time.perf_counter() - t0,
        "throughput/generate_tok_s": gen_tokens / max(t_gen, 1e-9),
        "throughput/train_tok_s": train_tokens / max(t_train, 1e-9),
        "memory/peak_rss_gb": peak_rss_gb(),
    }


def _autocast(precision: str):
    """A factory of the autocast context of ``precision`` (fp32: a no-op)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
