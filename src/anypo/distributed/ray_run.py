"""The online loop on Ray: R rollout actors, L learner actors (one FSDP2 group), the driver in between.

What runs where (synchronous mode, one step):

1. **Driver** (the ``anypo train`` process): the shared run scaffold (``anypo.run``: run directory,
   logs, checkpoints, evaluation schedule) and the online loop's rollout, unchanged
   (``anypo.train.Context.rollout``: the sampler's prompts, dynamic-sampling redraws, rewards, rollout
   metrics). Its engine is :class:`RayRolloutEngine`, which sends each ``generate`` call to the
   rollout actors.
2. **Rollout actors** (``RolloutWorker``): each holds a copy of the policy and the ``hf`` engine around
   it. By default one call runs on one actor, in turn: the ``hf`` engine draws one random stream for a
   whole call, so only then are the samples those of one process. ``dist.split_calls`` spreads the
   prompts of a call over the actors instead (each with its own seed: other samples).
3. **Learner actors** (``LearnerActor``): one gloo group; each runs
   ``anypo.distributed.learner.LearnerContext.learn`` on the whole batch (behaviour / reference
   passes, advantages, ``update``) and trains on its share of every mini-batch.
4. **Weight sync**: after a step that changed the weights, the learners gather the full weights
   (``full_tensor`` of every shard; a collective), rank 0 returns them into Ray's object store, and
   every rollout actor loads that one object (``load_state_dict``). The driver reads the same object
   only when it checkpoints or exports.

Asynchronous mode (``dist.asynchronous``, ``--dist.async``): step ``s`` sends its batch to the learners
(non-blocking) and, while they train, the driver generates the batches of the next steps with the
rollout actors' current weights (an older policy version), as long as each would be trained at most
``dist.max_staleness`` policy versions after the weights that generated it (:class:`AheadQueue`). A
policy version is one optimizer step of the learners. A queued batch that would exceed the bound (a
step took more optimizer steps than the last one) is dropped, counted and generated again. The
behaviour log-probs travel with each batch (``old_logprobs``: the engine's, of the version that
sampled it), so a ratio loss's importance ratio is against the behaviour policy; a loss with a
rollout correction (``tis``: token, sequence, IcePop's mask) has the learners recompute ``old_logprobs``
with the current weights and weighs by ``exp(old - behaviour)``, truncated or masked, the decoupled
form of AReaL.

Every ``ray.get`` has ``dist.timeout_s``, and so do the learners' collectives: a lost actor or a hang
fails the run with a message instead of waiting forever. A rollout actor that dies is restarted by
Ray and its call generated again (:class:`RayRolloutEngine`); a learner that dies stops the run with
the last good checkpoint named. Checkpoints hold the learners' whole optimizer state keyed by
parameter name, so they resume in one process or on a learner group of any size.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch

from anypo import models
from anypo.config import TrainConfig
from anypo.engines.base import Generation, SamplingConfig
from anypo.run import TrainingError, run_loop
from anypo.train import Context, step_metrics
from anypo.types import RolloutBatch

__all__ = ["AheadQueue", "Cluster", "DistContext", "LearnerActor", "RayRolloutEngine", "RolloutWorker", "train"]


def _get(refs, timeout: float, what: str):
    """``ray.get`` that fails with a message after ``timeout`` seconds instead of hanging."""
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.GetTimeoutError as e:
        raise TrainingError(f"{what} did not answer within dist.timeout-s = {timeout:g} s") from e


def _learners_get(refs, timeout: float, run_dir: Path, what: str):
    """``_get`` on the learners: a learner that died stops the run with the last good checkpoint named."""
    from anypo import checkpoint

    try:
        return _get(refs, timeout, what)
    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
        last = checkpoint.latest(run_dir)
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingError(
            f"a learner died during {what} ({type(e).__name__}); {where}. Continue with: anypo train --resume "
            f"{run_dir} (add --dist.backend none to continue in one process)"
        ) from e


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


@ray.remote
class RolloutWorker:
    """A rollout actor: the policy's tokenizer and weights, and the engine ``cfg.engine`` sampling from them
    (``hf`` samples from the actor's policy module; ``vllm`` from its own copy, synced with it)."""

    def __init__(self, cfg: TrainConfig, threads: int):
        from anypo.engines import make_engine

        torch.set_num_threads(threads)
        self.precision = cfg.precision
        self.model = models.load_model(cfg.model, seed=cfg.seed)
        self.engine = make_engine(cfg.engine, self.model, models.load_tokenizer(cfg.model.name))
        self.version = -1  # no weights from the learners yet (also after Ray restarted this actor)

    def generate(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int | None, version: int
    ) -> Generation | None:
        """The samples, or None when this actor does not hold weights ``version`` (it was restarted)."""
        if version != self.version:
            return None
        with _autocast(self.precision):
            return self.engine.generate(prompts, n, sampling, seed=seed)

    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        self.model.load_state_dict(state)
        self.engine.load_weights(state)  # hf: nothing to copy; vllm: into its copy of the weights
        self.version = version


@ray.remote
class LearnerActor:
    """One rank of the learner group (``anypo.distributed.learner.LearnerContext``)."""

    def __init__(self, threads: int):
        torch.set_num_threads(threads)
        self.ctx = None

    def address(self) -> str:
        from anypo.distributed.learner import free_address

        return free_address(ray.util.get_node_ip_address())

    def setup(self, cfg: TrainConfig, run_dir: str, address: str, rank: int, world: int) -> None:
        from anypo.distributed.learner import LearnerContext, init_group

        init_group(address, rank, world, cfg.dist.timeout_s)
        torch.manual_seed(cfg.seed)
        self.ctx = LearnerContext.build(cfg, Path(run_dir))

    @ray.method(num_returns=2)
    def learn(self, batch: RolloutBatch, m: dict[str, float], step: int):
        """The step's update; returns its metrics and, from rank 0 after a weight change, the full weights."""
        from anypo.distributed.learner import full_state_dict

        m = self.ctx.learn(batch, m, step)
        state = None
        if m["train/optimizer_steps"] > 0:  # the same on every rank: all of them join the gather
            t = time.perf_counter()
            full = full_state_dict(self.ctx.model)
            state = full if self.ctx.rank == 0 else None
            m["time/gather_weights_s"] = time.perf_counter() - t
        return m, state

    def portable_state(self) -> dict | None:
        """Rank 0: the name-keyed whole optimizer state, LR schedule and parts' state (None from the others);
        every rank must be asked (a gather)."""
        return self.ctx.portable_state()

    def load_portable_state(self, weights: dict[str, torch.Tensor], state: dict) -> None:
        self.ctx.load_portable_state(weights, state)

    def part_states(self) -> dict:
        """The parts' state (the same on every rank: they see the whole batch)."""
        return self.ctx.part_states

    def weights(self) -> dict[str, torch.Tensor] | None:
        """The full weights from rank 0 (None from the others); every rank must be asked."""
        from anypo.distributed.learner import full_state_dict

        full = full_state_dict(self.ctx.model)
        return full if self.ctx.rank == 0 else None

    def close(self) -> None:
        import torch.distributed as dist

        if self.ctx is not None:
            self.ctx.close()  # the offloaded reference copy
        if dist.is_initialized():
            dist.destroy_process_group()


class Cluster:
    """The Ray side of one run: the cluster connection, a placement group of R + L bundles, the actors."""

    def __init__(self, cfg: TrainConfig, run_dir: Path):
        d = cfg.dist
        self.cfg, self.timeout = cfg, d.timeout_s
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
            if d.address:
                ray.init(address=d.address, **kw)
            else:  # a local cluster sized for the actors (Ray's CPUs are logical: it may exceed the cores)
                n = (d.rollout_workers + d.learners) * d.cpus_per_actor
                ray.init(num_cpus=n, object_store_memory=d.object_store_mb * 2**20, **kw)
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._remove_pg = remove_placement_group
        bundles = [{"CPU": d.cpus_per_actor}] * (d.rollout_workers + d.learners)
        self.pg = placement_group(bundles, strategy=d.placement)
        try:
            ray.get(self.pg.ready(), timeout=self.timeout)
        except ray.exceptions.GetTimeoutError as e:
            self.shutdown()
            raise TrainingError(
                f"Ray could not place {len(bundles)} actors of {d.cpus_per_actor} CPU(s) ({d.placement}) within "
                f"{self.timeout:g} s: the cluster has {ray.cluster_resources().get('CPU', 0):g} CPUs; lower "
                "dist.rollout-workers / dist.learners / dist.cpus-per-actor or add nodes"
            ) from e

        def on(i: int):
            strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i)
            return {"num_cpus": d.cpus_per_actor, "scheduling_strategy": strategy}

        # Ray restarts a rollout actor that dies (its __init__ again: initial weights, version -1); the
        # engine notices, loads the current weights into it and generates the lost call again
        self.workers = [
            RolloutWorker.options(max_restarts=d.rollout_restarts, **on(i)).remote(cfg, d.cpus_per_actor)
            for i in range(d.rollout_workers)
        ]
        self.learners = [
            LearnerActor.options(**on(d.rollout_workers + r)).remote(d.cpus_per_actor) for r in range(d.learners)
        ]
        address = _get(self.learners[0].address.remote(), self.timeout, "learner 0")
        setups = [
            lr.setup.remote(cfg, str(run_dir / "learners" / f"rank{r}"), address, r, d.learners)
            for r, lr in enumerate(self.learners)
        ]
        _get(setups, self.timeout, "the learner group's setup")

    def weights_ref(self):
        """An object-store reference to the learners' full weights (a gather on every rank)."""
        refs = [lr.weights.remote() for lr in self.learners]
        _get(refs, self.timeout, "the learners' weight gather")
        return refs[0]

    def shutdown(self) -> None:
        for lr in getattr(self, "learners", []):
            with contextlib.suppress(Exception):  # an actor already gone needs no closing
                ray.get(lr.close.remote(), timeout=30)
        for a in [*getattr(self, "workers", []), *getattr(self, "learners", [])]:
            ray.kill(a)
        self._remove_pg(self.pg)
        if self.started_ray:
            ray.shutdown()


class RayRolloutEngine:
    """The engine protocol over the rollout actors.

    ``split=False``: each call runs whole on one actor, in turn (the samples of one process, with the
    ``hf`` engine's single random stream per call). ``split=True``: the prompts of a call are divided in
    contiguous blocks over the actors, block i seeded ``seed * 1_000_003 + i`` (other samples than one
    process draws; the call takes the slowest block's time instead of the sum).
    """

    def __init__(self, workers: list, pad_id: int, timeout: float, split: bool = False, max_restarts: int = 3):
        self.workers, self.pad_id, self.timeout, self.split = workers, pad_id, timeout, split
        self.max_restarts = max_restarts
        self.calls = 0
        self.state_ref, self.version = None, -1  # the weights every actor must hold, and their version
        self.restarts = 0  # lost calls generated again after an actor restart (popped into the step's metrics)

    def sync(self, state_ref, version: int) -> None:
        """Every rollout actor loads the weights behind ``state_ref`` (one object, read by each) as ``version``."""
        self.state_ref, self.version = state_ref, version
        _get(
            [w.load_weights.remote(state_ref, version) for w in self.workers],
            self.timeout,
            "the rollout actors' weight load",
        )

    def _on(self, i: int, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int | None) -> Generation:
        """One call on actor ``i``. If the actor died during it, or was restarted by Ray since the last
        weight sync (it then holds the initial weights and answers None), the current weights are loaded
        into it once it is back and the call is made again: the same prompts, seed and weights, so the
        same samples."""
        for _ in range(self.max_restarts + 1):
            try:
                out = _get(
                    self.workers[i].generate.remote(prompts, n, sampling, seed, self.version),
                    self.timeout,
                    f"rollout actor {i}",
                )
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                out = None  # died during the call; Ray restarts it (max_restarts)
            if out is not None:
                return out
            self.restarts += 1
            self._revive(i)
        raise TrainingError(
            f"rollout actor {i} failed {self.max_restarts + 1} times in one call (dist.rollout-restarts = "
            f"{self.max_restarts}); see the Ray logs (/tmp/ray/session_latest/logs) for why it died"
        )

    def _revive(self, i: int) -> None:
        """Wait (at most ``timeout``) until Ray has restarted actor ``i``, then load the current weights into it."""
        start = time.monotonic()
        deadline = start + self.timeout
        while True:
            try:
                ray.get(self.workers[i].load_weights.remote(self.state_ref, self.version), timeout=self.timeout)
                return
            except ray.exceptions.ActorDiedError as e:  # dead for good, unless Ray has not marked the restart yet
                if time.monotonic() - start > 10.0:
                    raise TrainingError(
                        f"rollout actor {i} died and Ray did not restart it (dist.rollout-restarts = "
                        f"{self.max_restarts}); see the Ray logs (/tmp/ray/session_latest/logs) for why"
                    ) from e
                time.sleep(0.5)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                if time.monotonic() > deadline:
                    raise TrainingError(
                        f"rollout actor {i} did not come back within dist.timeout-s = {self.timeout:g} s"
                    ) from e
                time.sleep(0.5)  # restarting: its __init__ loads torch and the model

    def generate(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int | None = None
    ) -> Generation:
        if not self.split or len(prompts) < 2 or len(self.workers) < 2:
            i = self.calls % len(self.workers)
            self.calls += 1
            return self._on(i, prompts, n, sampling, seed)
        from anypo.distributed.learner import rank_rows

        k = min(len(self.workers), len(prompts))
        blocks = [rank_rows(len(prompts), i, k).tolist() for i in range(k)]
        seeds = [None if seed is None else seed * 1_000_003 + i for i in range(k)]
        refs = [
            self.workers[i].generate.remote([prompts[j] for j in b], n, sampling, seeds[i], self.version)
            for i, b in enumerate(blocks)
        ]
        gens: list[Generation | None] = []
        for ref in refs:
            try:
                gens.append(_get(ref, self.timeout, "the rollout actors"))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                gens.append(None)
        gens = [
            g if g is not None else self._on(i, [prompts[j] for j in blocks[i]], n, sampling, seeds[i])
            for i, g in enumerate(gens)
        ]
        return concat_generations(gens, [b[0] for b in blocks], self.pad_id)

    def pop_restarts(self) -> float:
        n, self.restarts = self.restarts, 0
        return float(n)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.sync(ray.put(state_dict), self.version + 1)


def concat_generations(gens: list[Generation], offsets: list[int], pad_id: int) -> Generation:
    """One ``Generation`` of consecutive blocks of prompts (block i's prompts start at ``offsets[i]``);
    responses right-padded to the longest."""
    T = max(g.response_ids.shape[1] for g in gens)

    def pad(x: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)

    return Generation(
        prompt_index=torch.cat([g.prompt_index + o for g, o in zip(gens, offsets, strict=True)]),
        response_ids=torch.cat([pad(g.response_ids, pad_id) for g in gens]),
        response_mask=torch.cat([pad(g.response_mask, 0) for g in gens]),
        logprobs=torch.cat([pad(g.logprobs, 0.0) for g in gens]),
        truncated=torch.cat([g.truncated for g in gens]),
    )


def _driver_does_not_generate(*args, **kwargs):
    raise RuntimeError(
        "the driver's own engine was called in a distributed run: a handle on it was not replaced by "
        "RayRolloutEngine (anypo.distributed.ray_run._replace_everywhere)"
    )


def _replace_everywhere(root: object, old: object, new: object, depth: int = 3) -> None:
    """Point every attribute that holds ``old`` to ``new``, in ``root`` and in the anypo objects it holds
    (the loop's rollout part, its group rollout, ...), down to ``depth`` levels."""
    seen: set[int] = set()

    def visit(obj: object, level: int) -> None:
        if id(obj) in seen or level > depth or not type(obj).__module__.startswith("anypo"):
            return
        seen.add(id(obj))
        for name, value in list(getattr(obj, "__dict__", {}).items()):
            if value is old:
                setattr(obj, name, new)
            elif value is not new:
                visit(value, level + 1)

    visit(root, 0)


@dataclass
class Ahead:
    """A batch generated ahead of its step: the step it is for, its rollout metrics, and the policy
    version (learner optimizer steps so far) of the weights that generated it."""

    step: int
    batch: RolloutBatch
    metrics: dict[str, float]
    version: int


class AheadQueue:
    """Async mode's batches generated ahead of training, oldest first, within a staleness bound.

    A batch generated now, at policy version ``v``, for the ``j``-th next step is trained after about
    ``j * u`` more optimizer steps, ``u`` the optimizer steps of the last step; :meth:`room` lets the
    driver generate it only while ``j * u <= max_staleness``. :meth:`pop` hands out the batch of a step
    unless it is more than ``max_staleness`` versions old by then (dropped and counted).
    """

    def __init__(self, max_staleness: int):
        if max_staleness < 1:
            raise ValueError(f"dist.max-staleness must be >= 1 in async mode, got {max_staleness}")
        self.max_staleness = max_staleness
        self.items: deque[Ahead] = deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.items)

    def room(self, updates_per_step: float) -> bool:
        """Whether one more batch may be generated now: it would be trained ``len + 1`` steps from now."""
        return (len(self.items) + 1) * max(updates_per_step, 1.0) <= self.max_staleness

    def push(self, item: Ahead) -> None:
        self.items.append(item)

    def pop(self, step: int, version: int) -> tuple[Ahead | None, int]:
        """The batch generated for ``step`` if it is at most ``max_staleness`` versions older than
        ``version`` (else None), and how many batches were dropped for staleness (counted in ``dropped``)."""
        dropped = 0
        while self.items and (self.items[0].step < step or version - self.items[0].version > self.max_staleness):
            item = self.items.popleft()
            if item.step >= step:  # too old: this and every later one (generated no later) go
                dropped += 1 + len(self.items)
                self.items.clear()
                break
            # an earlier step's batch (cannot happen in a run; kept out of training all the same)
        self.dropped += dropped
        if self.items and self.items[0].step == step:
            return self.items.popleft(), dropped
        return None, dropped


class DistContext(Context):
    """The driver's loop: ``Context``'s rollout through :class:`RayRolloutEngine`, the update in the learner
    actors, the weights sent to the rollout actors after each update. The driver keeps a copy of the
    policy only for checkpoints and the final export, refreshed from the learners when they are written."""

    @classmethod
    def build(cls, cfg: TrainConfig, run_dir: Path, cluster: Cluster) -> DistContext:
        self = super().build(cfg, run_dir)
        self.cluster = cluster
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        local, self.engine = (
            self.engine,
            RayRolloutEngine(cluster.workers, pad, cfg.dist.timeout_s, cfg.dist.split_calls, cfg.dist.rollout_restarts),
        )
        _replace_everywhere(self, local, self.engine)  # every handle on the driver's engine reaches the actors
        local.generate = _driver_does_not_generate  # and one this sweep missed fails instead of sampling stale weights
        self._state_ref = cluster.weights_ref()  # the learners' initial weights, to every rollout actor
        self.engine.sync(self._state_ref, 0)
        self._driver_current = False
        self.version = 0  # policy version: the learners' optimizer steps so far (the rollout actors' weights)
        self._updates_per_step = 1.0  # optimizer steps of the last step: how far ahead async may generate
        self.ahead = AheadQueue(cfg.dist.max_staleness) if cfg.dist.asynchronous else None
        return self

    def step(self, step: int) -> tuple[RolloutBatch, dict[str, float]]:
        if self.ahead is not None:
            return self._async_step(step)
        d = self.cfg.dist
        t0 = time.perf_counter()
        with self.autocast():
            batch, m = self.rollout(step)
        t_gen = time.perf_counter() - t0
        t1 = time.perf_counter()
        calls = self._start_learn(batch, m, step)
        m = _learners_get([c[0] for c in calls], d.timeout_s, self.run_dir, f"step {step}'s update")[0]
        t_learn = time.perf_counter() - t1
        t2 = time.perf_counter()
        self._sync_weights(calls, m)
        t_sync = time.perf_counter() - t2
        n_tokens = float(batch.response_mask.sum())
        m.update({"time/learn_s": t_learn, "time/weight_sync_s": t_sync})
        m.update(step_metrics(t0, t_gen, n_tokens, n_tokens * self.algo.ppo_epochs, m.get("time/train_s", 0.0)))
        m.update({"dist/rollout_workers": float(d.rollout_workers), "dist/learners": float(d.learners)})
        m["dist/rollout_restarts"] = self.engine.pop_restarts()
        return batch, m

    def _start_learn(self, batch: RolloutBatch, m: dict[str, float], step: int) -> list:
        """Send the step's batch to every learner (one object in the store) without waiting; their calls."""
        self.mid_update = True
        self.current_step = step
        batch_ref = ray.put(batch)
        return [lr.learn.remote(batch_ref, m, step) for lr in self.cluster.learners]

    def _sync_weights(self, calls: list, m: dict[str, float]) -> None:
        """After an update that changed the weights: the new policy version, rank 0's gathered weights to
        every rollout actor, and how many optimizer steps the step took (how far async may generate ahead)."""
        updates = int(m["train/optimizer_steps"])
        if updates > 0:
            self.version += updates
            self._state_ref, self._driver_current = calls[0][1], False
            self.engine.sync(self._state_ref, self.version)
            self._updates_per_step = float(updates)

    def _async_step(self, step: int) -> tuple[RolloutBatch, dict[str, float]]:
        """Train on step ``step``'s batch (generated ahead, or now) while generating the next ones."""
        d = self.cfg.dist
        t0 = time.perf_counter()
        item, dropped = self.ahead.pop(step, self.version)
        if item is None:  # the first step, or its ahead batch was too stale: generate it now
            with self.autocast():
                batch, m = self.rollout(step)
            item = Ahead(step, batch, m, self.version)
        t_wait_gen = time.perf_counter() - t0
        batch, m = item.batch, dict(item.metrics)
        staleness = self.version - item.version
        calls = self._start_learn(batch, m, step)
        # ---- while the learners train: the next steps' batches, with the weights of version self.version ----
        t1 = time.perf_counter()
        ahead_tokens = 0.0
        next_step = step + 1 + len(self.ahead)
        while next_step <= self.cfg.steps and self.ahead.room(self._updates_per_step):
            with self.autocast():
                b, bm = self.rollout(next_step)
            self.ahead.push(Ahead(next_step, b, bm, self.version))
            ahead_tokens += bm.get("rollout/generated_tokens", 0.0)
            next_step += 1
        t_ahead = time.perf_counter() - t1
        t2 = time.perf_counter()
        outs = _learners_get([c[0] for c in calls], d.timeout_s, self.run_dir, f"step {step}'s update")
        t_wait_learn = time.perf_counter() - t2
        m = outs[0]
        t3 = time.perf_counter()
        self._sync_weights(calls, m)
        t_sync = time.perf_counter() - t3
        n_tokens = float(batch.response_mask.sum())
        m.update(
            step_metrics(
                t0, t_wait_gen + t_ahead, n_tokens, n_tokens * self.algo.ppo_epochs, m.get("time/train_s", 0.0)
            )
        )
        m.update(
            {
                "time/generate_wait_s": t_wait_gen,  # generation the step waited for (none once the queue runs)
                "time/generate_ahead_s": t_ahead,  # generation that overlapped the learners' update
                "time/learn_wait_s": t_wait_learn,  # the learners' update left after the generation ahead
                "time/weight_sync_s": t_sync,
                "dist/staleness": float(staleness),
                "dist/dropped_stale_batches": float(dropped),
                "dist/ahead_batches": float(len(self.ahead)),
                "dist/ahead_tokens": ahead_tokens,
                "dist/policy_version": float(self.version),
                "dist/rollout_restarts": self.engine.pop_restarts(),
                "dist/rollout_workers": float(d.rollout_workers),
                "dist/learners": float(d.learners),
            }
        )
        return batch, m

    def _current_weights(self) -> None:
        """Load the learners' latest weights into the driver's copy (for checkpoints and export)."""
        if not self._driver_current:
            state = _get(self._state_ref, self.cfg.dist.timeout_s, "the weights in the object store")
            self.model.load_state_dict(state)
            self._driver_current = True

    def checkpoint_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        self._current_weights()
        return super().checkpoint_tensors()

    def checkpoint_state(self) -> dict:
        """The learners' whole optimizer state keyed by parameter name (gathered from their shards), their
        LR schedule: a checkpoint that one process or a learner group of any size resumes."""
        states = _learners_get(
            [lr.portable_state.remote() for lr in self.cluster.learners],
            self.cfg.dist.timeout_s,
            self.run_dir,
            "the checkpoint's optimizer gather",
        )
        return {"optimizer": states[0]["optimizer"], "scheduler": states[0]["scheduler"], "critic_optimizer": None}

    def step_state(self) -> dict:
        """``Context.step_state`` with the parts' state of the learners (where the advantages and losses
        run) and the policy version."""
        state = super().step_state()
        state["part_states"] = _learners_get(
            self.cluster.learners[0].part_states.remote(), self.cfg.dist.timeout_s, self.run_dir, "the parts' state"
        )
        state["policy_version"] = self.version
        if self.ahead is not None:  # the batches already drawn for the next steps: the sampler is past them
            state["ahead"] = [(a.step, a.batch, a.metrics, a.version) for a in self.ahead.items]
        return state

    def load_checkpoint(self, tensors: dict, state: dict) -> None:
        """Resume from a checkpoint of a distributed or a single-process run: the driver's copy and
        per-step state as ``Context`` does, then the learners get the weights, the optimizer state (by
        parameter name, whichever run wrote it), the schedule and the parts' state, and the rollout
        actors the weights."""
        super().load_checkpoint(tensors, state)
        from anypo import checkpoint

        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        by_index = checkpoint.optimizer_state_by_index(state["optimizer"], names)
        portable = {
            "optimizer": checkpoint.optimizer_state_by_name(by_index, names),
            "scheduler": state["scheduler"],
            "part_states": state.get("part_states", {}),
        }
        weights = ray.put({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        _learners_get(
            [lr.load_portable_state.remote(weights, portable) for lr in self.cluster.learners],
            self.cfg.dist.timeout_s,
            self.run_dir,
            "the learners' resume",
        )
        self.version = int(state.get("policy_version", state["step"]))
        self._state_ref, self._driver_current = weights, True
        self.engine.sync(weights, self.version)
        if self.ahead is not None:  # async: the queued batches, so the next steps train on what they would have
            self.ahead.items.extend(Ahead(*a) for a in state.get("ahead", []))

    def export(self, out: Path) -> None:
        self._current_weights()
        super().export(out)

    def describe(self) -> str:
        d = self.cfg.dist
        return (
            super().describe()[:-1] + f"; on Ray: {d.rollout_workers} rollout actor(s) (hf engine), "
            f"{d.learners} FSDP2 learner(s) on gloo."
        )


def train(cfg: TrainConfig, resume: str | Path | None = None) -> Path:
    """Run ``cfg`` on Ray (``cfg.dist.backend == "ray"``); returns the run directory.

    The whole config is checked first (the single-process checks and ``dist_config_problems``). The
    actors are removed and a local Ray instance shut down when the run ends, also on an error.
    """
    from anypo.distributed import dist_config_problems
    from anypo.errors import UserError
    from anypo.validate import train_config_problems

    problems = train_config_problems(cfg) + dist_config_problems(cfg)
    if problems:
        raise UserError(problems)
    holder: dict[str, Cluster] = {}

    def build(c: TrainConfig, run_dir: Path) -> DistContext:
        holder["cluster"] = Cluster(c, run_dir)
        return DistContext.build(c, run_dir, holder["cluster"])

    try:
        return run_loop(cfg, build, resume)
    finally:
        if "cluster" in holder:
            holder["cluster"].shutdown()
