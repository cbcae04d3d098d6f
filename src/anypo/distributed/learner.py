"""The learner group: torch.distributed ranks that shard the policy with FSDP2 and train it together.

Every rank holds the whole rollout batch and runs the online loop's own code on it (``anypo.train.
Context``: the behaviour / reference passes, the advantages, ``update``'s mini-batches of whole groups
with their seeded order and global ``LossScale``, ``prepare``, ``_minibatch_step``). Only the hooks of
a mini-batch step differ (``LearnerContext._micro_batches``, ``_backward``, ``_all_finite``,
``_combine_metrics``):

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
- a non-finite loss on any rank skips the step on every rank (the flag is reduced once every rank has
  run all of its passes), the gradient norm is the global one (``clip_grad_norm_`` over the DTensor
  shards), and the metrics of the ranks' micro-batches are combined by their reductions before the
  stateful parts see them.

Nothing here imports ray; the Ray actors in ``anypo.distributed.ray_run`` wrap these functions. The
tests run them in plain processes (``tests/distributed``).
"""

from __future__ import annotations

import dataclasses
import datetime
import socket
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from anypo.config import TrainConfig
from anypo.engines import logprobs_exact
from anypo.engines.base import SamplingConfig
from anypo.metrics import MetricAccumulator
from anypo.ops import masked_mean
from anypo.policy import batched_logprobs
from anypo.train import Context
from anypo.types import MetricReduction, RolloutBatch

__all__ = [
    "LearnerContext",
    "combine_metrics",
    "free_address",
    "full_optimizer_state",
    "full_state_dict",
    "init_group",
    "load_full_state",
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


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
    """The whole optimizer state keyed by parameter name (a collective: every rank must call it); rank 0
    gets it, on the CPU, the others None. It is the form ``anypo.checkpoint.optimizer_state_by_index``
    turns into a single process's optimizer state, and :func:`load_full_state` reads on any group."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if dist.get_rank() == 0 else None


def load_full_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor], optim_state: dict
) -> None:
    """Load whole weights and a name-keyed whole optimizer state into this rank's shards (every rank
    calls it with the same arguments)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)


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


class ActorsEngine:
    """What a learner knows of the rollout actors' engine: whether its log-probs are the contract's (else
    ``fill_behaviour`` recomputes the old log-probs, as in one process). It generates nothing."""

    def __init__(self, name: str):
        self.name = name

    def logprobs_exact(self, sampling: SamplingConfig) -> bool:
        return logprobs_exact(self.name, sampling)


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
        from anypo.trainer_setup import make_optimizer, make_scheduler
        from anypo.validate import sharded_optimizer_problems

        for problem in sharded_optimizer_problems(cfg.optimizer):  # validate refuses it first; a direct build too
            raise ValueError(problem)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        # the packed pass calls the model's body and head apart, around the root module's forward, where
        # FSDP2 gathers the root group's weights (embeddings, head): the learners run the padded pass,
        # the same function (docs/training.md) with another rounding
        cfg = dataclasses.replace(cfg, pack_prompts=False)
        self = super().build(cfg, run_dir)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        shard_policy(self.model, mixed_precision=cfg.dist.mixed_precision)
        params = [p for p in self.model.parameters() if p.requires_grad]
        # over this rank's shards; AdamW is element-wise, so it matches the whole-model optimizer
        self.optimizer = make_optimizer(params, cfg, fused=True)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.engine = ActorsEngine(cfg.engine)  # generation runs in the rollout actors
        self.rollout_part = None
        return self

    # ---- checkpoints: the whole state, readable by one process or any group (DESIGN: exact resume) ----
    def portable_state(self) -> dict | None:
        """Rank 0: the optimizer state keyed by parameter name (gathered from every rank's shards: a
        collective), the LR schedule and the parts' state; the other ranks None."""
        optim = full_optimizer_state(self.model, self.optimizer)
        if self.rank != 0:
            return None
        return {"optimizer": optim, "scheduler": self.scheduler.state_dict(), "part_states": self.part_states}

    def load_portable_state(self, weights: dict[str, torch.Tensor], state: dict) -> None:
        """Every rank: the whole weights, the name-keyed optimizer state, the schedule, the parts' state."""
        load_full_state(self.model, self.optimizer, weights, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        saved = state.get("part_states", {})
        self.part_states = {
            slot: saved[slot] if slot in saved else part.init_state()
            for slot, part in self.algo.stateful_parts().items()
        }

    def fill_needs(self, batch: RolloutBatch, m: dict[str, float], behaviour: bool = True) -> None:
        """``Context.fill_needs``, then (``dist.check_logprobs``) the gap between the engine's and the
        learner's log-probs, with the weights that generated ``batch``."""
        super().fill_needs(batch, m, behaviour)
        if self.cfg.dist.check_logprobs:
            m.update(self.engine_logprob_gap(batch))

    def engine_logprob_gap(self, batch: RolloutBatch) -> dict[str, float]:
        """Mean and max |engine log-prob - learner log-prob| over the response tokens, with the weights that
        generated ``batch`` (called before the update). Uses the learner's pass when ``fill_behaviour``
        recomputed the old log-probs (``rollout_logprobs`` then holds the engine's), else one no-grad pass."""
        cfg = self.cfg
        if batch.rollout_logprobs is not None and batch.old_logprobs is not None:
            engine, learner = batch.rollout_logprobs, batch.old_logprobs
        else:  # the engine's are old_logprobs, or rollout_logprobs with old_logprobs left to the loss
            engine = batch.old_logprobs if batch.old_logprobs is not None else batch.rollout_logprobs
            learner = batched_logprobs(
                self.model, batch, cfg.sampling.temperature, cfg.micro_batch_size, cfg.pack_prompts
            )
        diff = (engine - learner).abs() * batch.mask
        return {
            "dist/engine_logprob_abs_diff": float(masked_mean(diff, batch.response_mask)),
            "dist/engine_logprob_max_abs_diff": float(diff.max()),
        }

    # ---- what differs in a mini-batch step (the hooks of Context._minibatch_step) ----
    lockstep = True  # FSDP2 runs collectives in every pass: every rank runs all of its passes

    def _micro_batches(self, mini: RolloutBatch) -> list[RolloutBatch | None]:
        """This rank's share of ``mini``'s rows in micro-batches (keeping the global ``loss_scale``), padded
        with None (zero-loss passes) to the group's largest number of micro-batches."""
        local = mini.select(rank_rows(mini.num_seqs, self.rank, self.world))
        micros = super()._micro_batches(local) if local.num_seqs else []
        passes = int(_all_max(len(micros)))  # FSDP's collectives need the same number of passes on every rank
        return micros + [None] * (passes - len(micros))

    def _backward(self, loss: torch.Tensor) -> None:
        (loss * self.world).backward()  # FSDP2 averages over the ranks: the average of world * g_r is sum_r g_r

    def _all_finite(self, finite: bool) -> bool:
        return _all_max(0.0 if finite else 1.0) == 0.0

    def _combine_metrics(self, acc: MetricAccumulator) -> tuple[dict[str, float], dict[str, MetricReduction]]:
        """The group's metrics: every rank's, combined in rank order (the same floats on every rank)."""
        values = acc.result()
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, (values, {k: acc.reduction(k) for k in values}))
        reductions: dict[str, MetricReduction] = {}
        for _, reds in gathered:
            for k, red in reds.items():
                reductions.setdefault(k, red)
        return combine_metrics(gathered), reductions
