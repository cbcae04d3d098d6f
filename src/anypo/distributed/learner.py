"""The learner group: torch.distributed ranks that shard the policy with FSDP2 and train it together.

Every rank holds the whole rollout batch and runs the online loop's own code on it (``anypo.train.
Context``: the behaviour / reference passes, the advantages, ``update``'s mini-batches of whole groups
with their seeded order and global ``LossScale``, ``prepare``). Only the optimizer step of a
mini-batch differs (:meth:`LearnerContext._minibatch_step`):

- rank r takes its share of the mini-batch's rows (:func:`rank_rows`: contiguous, sizes differ by at
  most one) and splits it into micro-batches of ``micro_batch_size``. Every micro-batch keeps the
  *mini-batch's* global token and sequence counts (``mini.loss_scale``, computed by ``update`` from the
  whole mini-batch before any split), so the micro-batch losses of all ranks add up to the mini-batch's
  loss: ``sum_r sum_m loss(micro_{r,m}) = loss(mini)`` (the micro-batch contract across ranks);
- FSDP2 averages gradients over the ranks in its reduce-scatter (gloo has no pre-multiplied sum), so
  each rank back-propagates ``world * loss``: the average of ``world * g_r`` is ``sum_r g_r``, the
  gradient of the mini-batch's loss;
- FSDP2 runs collectives in every forward and backward, so every rank runs the same number of
  passes: a rank with fewer micro-batches runs extra passes on one row of the mini-batch with loss
  ``0 * sum(logprobs)``, which adds nothing to any gradient;
- a non-finite loss on any rank skips the step on every rank (the flag is reduced), the gradient
  norm is the global one (``clip_grad_norm_`` over the DTensor shards), and the metrics of the ranks'
  micro-batches are combined by their reductions before the stateful parts see them.

Nothing here imports ray; the Ray actors in ``anypo.distributed.ray_run`` wrap these functions. The
tests run them in plain processes (``tests/distributed``).
"""

from __future__ import annotations

import dataclasses
import datetime
import socket
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from anypo.config import TrainConfig
from anypo.metrics import MetricAccumulator
from anypo.ops import masked_mean, masked_sum
from anypo.policy import batched_logprobs, micro_batches, response_logprobs
from anypo.rollout.stats import advantage_metrics
from anypo.train import Context
from anypo.types import MetricReduction, RolloutBatch

__all__ = [
    "LearnerContext",
    "combine_metrics",
    "free_address",
    "full_state_dict",
    "init_group",
    "rank_rows",
    "shard_policy",
]


def free_address(host: str = "127.0.0.1") -> str:
    """``tcp://host:port`` with a port that was free on this machine a moment ago (rank 0's address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return f"tcp://{host}:{s.getsockname()[1]}"


def init_group(address: str, rank: int, world: int, timeout_s: float) -> None:
    """Join the gloo group at ``address``; every collective then fails after ``timeout_s`` instead of hanging."""
    dist.init_process_group(
        "gloo", init_method=address, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s)
    )


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a HF causal LM (modules whose class name ends in ``DecoderLayer``)."""
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise ValueError(f"found no decoder layers (a module class named *DecoderLayer) in {type(model).__name__}")
    return layers


def shard_policy(model: torch.nn.Module, mixed_precision: bool = False) -> torch.nn.Module:
    """FSDP2 in place: ``fully_shard`` on each decoder layer, then on the root (embeddings, final norm
    and the head, tied or not, in one group). Every rank must hold the same initial weights.

    ``mixed_precision``: bf16 parameters in forward and backward, float32 gradient reduction
    (``MixedPrecisionPolicy``); the sharded weights and optimizer states stay float32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw = {}
    if mixed_precision:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*_register_pre_backward_hook.*")
        for layer in decoder_layers(model):
            fully_shard(layer, **kw)
        fully_shard(model, **kw)
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights on every rank (a collective: every rank must call it), as plain tensors."""
    out = {}
    for k, v in model.state_dict().items():
        full = v.full_tensor() if hasattr(v, "full_tensor") else v
        out[k] = full.detach().clone()
    return out


def rank_rows(n: int, rank: int, world: int) -> torch.Tensor:
    """The rows of an ``n``-row mini-batch that ``rank`` trains on: a contiguous block; the first
    ``n % world`` ranks get one row more (a rank may get none when ``n < world``)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return torch.arange(start, start + base + (1 if rank < extra else 0))


def combine_metrics(parts: list[tuple[dict[str, float], dict[str, MetricReduction]]]) -> dict[str, float]:
    """The mini-batch's metrics from the ranks' partial ones, in rank order (so every rank gets the same
    floats): ``sum`` / ``token_mean`` / ``seq_mean`` values are already weighted by the global counts and
    add up; ``max`` / ``min`` keep the extreme."""
    out: dict[str, float] = {}
    for values, reductions in parts:
        for k, v in values.items():
            red = reductions[k]
            if k not in out:
                out[k] = v
            elif red == "max":
                out[k] = max(out[k], v)
            elif red == "min":
                out[k] = min(out[k], v)
            else:
                out[k] += v
    return out


def _all_max(x: float) -> float:
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


class LearnerContext(Context):
    """One rank of the learner group: the online loop's ``Context`` with the policy sharded by FSDP2 and a
    mini-batch step that trains on this rank's share of each mini-batch (see the module docstring).

    Build it with ``LearnerContext.build(cfg, run_dir)`` after :func:`init_group`; ``run_dir`` must be this
    rank's own directory (the reference copy is written there). The distributed loop calls
    :meth:`learn` with the whole step's batch on every rank, and :func:`full_state_dict` after it.
    """

    rank = 0
    world = 1

    @classmethod
    def build(cls, cfg: TrainConfig, run_dir: Path) -> LearnerContext:
        from anypo.trainer_setup import make_scheduler

        Path(run_dir).mkdir(parents=True, exist_ok=True)
        # the packed pass calls the model's body and head apart, around the root module's forward, where
        # FSDP2 gathers the root group's weights (embeddings, head): the learners run the padded pass,
        # the same function (docs/training.md) with another rounding
        cfg = dataclasses.replace(cfg, pack_prompts=False)
        self = super().build(cfg, run_dir)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        shard_policy(self.model, mixed_precision=cfg.dist.mixed_precision)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True
        )  # over this rank's shards; AdamW is element-wise, so it matches the whole-model optimizer
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.engine = None  # generation runs in the rollout actors
        self.rollout_part = None
        return self

    def learn(self, batch: RolloutBatch, m: dict[str, float], step: int) -> dict[str, float]:
        """What ``Context.step`` does after the rollout, on the whole batch: the behaviour / reference
        passes the parts need, the advantages, the proxies, then ``update``; returns the step's metrics
        (``m`` updated), the same on every rank."""
        t1 = time.perf_counter()
        if batch.num_seqs:
            with self.autocast():
                self.fill_needs(batch, m, behaviour=True)
                if self.cfg.dist.check_logprobs:
                    m.update(self.engine_logprob_gap(batch))
            batch.part_metrics = {}
            batch.advantages = self.advantage_fn(self._with_state(batch, "advantage"), self.algo.advantage)
            m.update(advantage_metrics(batch))
            batch.part_state = batch.part_metrics = None
            self.fill_proxy(batch)
        t_prep = time.perf_counter() - t1
        t2 = time.perf_counter()
        self.current_step = step
        m.update(self.update(batch))
        m["time/prepare_s"] = t_prep
        m["time/train_s"] = time.perf_counter() - t2
        return m

    def engine_logprob_gap(self, batch: RolloutBatch) -> dict[str, float]:
        """Mean and max |engine log-prob - learner log-prob| over the response tokens, with the weights that
        generated ``batch`` (called before the update). Uses the learner's pass when ``fill_behaviour``
        recomputed the old log-probs (``rollout_logprobs`` then holds the engine's), else one no-grad pass."""
        cfg = self.cfg
        if batch.rollout_logprobs is not None:
            engine, learner = batch.rollout_logprobs, batch.old_logprobs
        else:
            engine = batch.old_logprobs
            learner = batched_logprobs(
                self.model, batch, cfg.sampling.temperature, cfg.micro_batch_size, cfg.pack_prompts
            )
        diff = (engine - learner).abs() * batch.mask
        return {
            "dist/engine_logprob_abs_diff": float(masked_mean(diff, batch.response_mask)),
            "dist/engine_logprob_max_abs_diff": float(diff.max()),
        }

    def _minibatch_step(self, mini: RolloutBatch, reductions: dict[str, MetricReduction]) -> dict[str, float] | None:
        """One optimizer step on ``mini`` with this rank's share of its rows; the contract of
        ``Context._minibatch_step`` (None and no weight change on a non-finite loss or gradient on any
        rank; no AdamW step on an exactly zero gradient), its metrics and timings."""
        cfg, algo = self.cfg, self.algo
        self.optimizer.zero_grad(set_to_none=True)
        acc = MetricAccumulator()
        times = {"time/forward_s": 0.0, "time/backward_s": 0.0}
        clock = time.perf_counter
        scale = mini.loss_scale
        local = mini.select(rank_rows(mini.num_seqs, self.rank, self.world))  # keeps the global loss_scale
        micros = [mb for _, mb in micro_batches(local, cfg.micro_batch_size)] if local.num_seqs else []
        passes = int(_all_max(len(micros)))  # FSDP's collectives need the same number of passes on every rank
        filler = mini.select(torch.arange(1)).trimmed()
        finite = True
        need_ent = cfg.log_entropy or algo.needs("entropy")
        for i in range(passes):
            micro = micros[i] if i < len(micros) else None
            t = clock()
            with self.autocast():  # the backward runs outside autocast, as in the single process
                if micro is None:  # a pass that only keeps the collectives in step: zero loss, zero gradient
                    out = response_logprobs(self.model, filler, cfg.sampling.temperature, pack=cfg.pack_prompts)
                    loss, parts = out.logprobs.float().sum() * 0.0, []
                else:
                    out = response_logprobs(
                        self.model, micro, cfg.sampling.temperature, entropy=need_ent, logits=algo.needs("logits"),
                        entropy_grad=algo.needs("entropy"), pack=cfg.pack_prompts,
                    )  # fmt: skip
                    parts = [self.loss_fn(out, self._with_state(micro, "policy_loss"), algo.policy_loss)]
                    for j, (fn, rcfg) in enumerate(zip(self.reg_fns, algo.regularizers, strict=True)):
                        parts.append(fn(out, self._with_state(micro, f"regularizers.{j}"), rcfg))
                    loss = sum((p.loss.float() for p in parts), torch.zeros(()))
            finite = finite and bool(torch.isfinite(loss))
            t, times["time/forward_s"] = clock(), times["time/forward_s"] + clock() - t
            (loss * self.world).backward()  # FSDP2 averages over the ranks: the average of world * g_r is sum_r g_r
            times["time/backward_s"] += clock() - t
            if micro is None:
                continue
            tok_share = float(micro.response_mask.sum()) / max(scale.num_tokens, 1.0)
            seq_share = micro.num_seqs / max(scale.num_seqs, 1.0)
            for p in parts:
                for k, v in p.metrics.items():
                    acc.add(k, float(v), p.reduction(k), tok_share, seq_share)
            if out.entropy is not None and not any("policy/entropy" in p.metrics for p in parts):
                ent = float(masked_sum(out.entropy.detach(), micro.mask)) / max(scale.num_tokens, 1.0)
                acc.add("policy/entropy", ent, "sum", tok_share, seq_share)
            acc.add("loss/total", float(loss.detach()), "sum", tok_share, seq_share)
        t = clock()
        bad = _all_max(0.0 if finite else 1.0) > 0
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))  # global: over all shards
        if bad or not torch.isfinite(torch.tensor(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        no_signal = grad_norm == 0.0
        if not no_signal:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # the schedule follows planned steps, taken or skipped for no signal
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step\\(\\)` before", UserWarning)
            self.scheduler.step()
        values = acc.result()
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, (values, {k: acc.reduction(k) for k in values}))
        out_m = combine_metrics(gathered)
        for _, reds in gathered:
            for k, red in reds.items():
                reductions.setdefault(k, red)
        out_m.update(times)
        out_m["train/grad_norm"] = grad_norm
        out_m["time/optimizer_s"] = clock() - t
        for slot, part in algo.stateful_parts().items():  # once per optimizer step, with the group's metrics
            part.update_state(self.part_states[slot], out_m)
        out_m["train/no_signal"] = float(no_signal)
        return out_m
