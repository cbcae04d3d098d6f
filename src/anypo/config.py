"""Typed configuration: the algorithm (which parts, with which hyperparameters) and the run.

Derived values are properties, never mutated in ``__post_init__``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from anypo.engines.base import SamplingConfig
from anypo.models import ModelConfig
from anypo.tasks import TaskConfig
from anypo.types import PartConfig


@dataclass(frozen=True)
class AlgoConfig:
    """Which registered part of each kind a method uses, each with its own config.

    A preset (``anypo.algorithms``) is a function returning one of these. The loop reads the
    ``needs_*`` properties of the parts; it never compares names.
    """

    advantage: PartConfig
    """Config of a registered ``advantage`` part (e.g. ``GRPOAdvantage()``)."""
    policy_loss: PartConfig
    """Config of a registered ``policy_loss`` part; it names its own aggregation."""
    regularizers: tuple[PartConfig, ...] = ()
    """Configs of registered ``regularizer`` parts, each added to the policy loss."""
    sampler: PartConfig | None = None
    """Config of a registered ``sampler``; None means uniform sampling."""
    reward_shaping: tuple[PartConfig, ...] = ()
    """Configs of registered ``reward`` parts added to the task reward (e.g. DAPO overlong shaping)."""
    value_loss: PartConfig | None = None
    """Config of a registered ``value_loss``; used only when a part ``needs_values``."""
    ppo_epochs: int = 1
    """Passes over each rollout batch in the policy update."""
    minibatch_prompts: int | None = None
    """Mini-batch size in whole groups (prompts): each pass over the rollout batch takes one optimizer step
    per ``minibatch_prompts`` prompts, over a seeded permutation of the groups, and never splits a group
    (verl's ``ppo_mini_batch_size`` counts prompts too). None: the whole rollout batch, one step per pass.
    A size larger than the rollout batch is the whole batch. It must divide the rollout batch."""

    def minibatches(self, prompts_per_step: int) -> int:
        """Optimizer steps per pass at ``prompts_per_step`` prompts (ceil; the config check asks for a divisor)."""
        size = self.minibatch_prompts
        if size is None or size >= prompts_per_step:
            return 1
        return -(-prompts_per_step // size)

    def on_policy(self, prompts_per_step: int) -> bool:
        """One optimizer step per rollout batch: the behaviour policy is the policy being trained."""
        return self.ppo_epochs == 1 and self.minibatches(prompts_per_step) == 1

    def parts(self) -> tuple[PartConfig, ...]:
        out: list[PartConfig] = [self.advantage, self.policy_loss, *self.regularizers, *self.reward_shaping]
        if self.sampler is not None:
            out.append(self.sampler)
        if self.value_loss is not None:
            out.append(self.value_loss)
        return tuple(out)

    def needs(self, what: str) -> bool:
        """True when any part declares ``needs_<what>`` (ref_logprobs, values, entropy, logits)."""
        return any(getattr(p, f"needs_{what}", False) for p in self.parts())


@dataclass(frozen=True)
class Preset:
    """A named method: its paper and a function building its ``AlgoConfig``."""

    name: str
    title: str
    arxiv: str
    status: str  # "verified" (formulas checked against paper/official code) or "reconstructed"
    build: Any = field(repr=False)
    summary: str = ""
    kind: str = "online"
    """The loop it runs in: online, preference, agentic, selfplay or classic."""


@dataclass(frozen=True)
class TrainConfig:
    """One online RL experiment. ``anypo train <preset>`` fills ``algo`` from the preset."""

    algo: AlgoConfig = field(default_factory=lambda: _default_algo())
    """The method: parts and their hyperparameters (from a preset)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy to train."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """The task: prompts, answers, reward."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How training completions are sampled."""
    rewards: tuple[str, ...] = ()
    """Reward terms replacing the task's default: registered names or `module:function` / `file.py:function`,
    each optionally `=weight` (e.g. `math_answer=1 format=0.1`). Empty: the task's default reward."""
    name: str = "grpo"
    """Run name; the run directory is <out_dir>/<name>-<timestamp>."""
    preset: str = ""
    """The preset `algo` was built from (informational; `anypo train <preset>` sets it)."""
    out_dir: str = "runs"
    """Where run directories are created."""
    steps: int = 30
    """Training steps (one rollout batch and its updates each); the upper bound when a budget is set."""
    budget_tokens: int = 0
    """Stop once this many response tokens have been generated for training (every draw counts, kept or
    dropped), so methods that sample more pay for it; 0: no token budget."""
    budget_seconds: float = 0.0
    """Stop after the first step that ends past this much training wall time (evaluations excluded); 0: none."""
    prompts_per_step: int = 4
    """B: prompts per step (counts prompts, not sequences)."""
    samples_per_prompt: int = 8
    """G: completions sampled per prompt (the group size)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass (memory knob; results do not depend on it)."""
    lr: float = 1e-6
    """Peak learning rate of AdamW."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Optimizer steps of linear learning-rate warm-up."""
    lr_schedule: str = "constant"
    """After warm-up: constant, linear or cosine."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    critic_lr: float = 1e-5
    """Learning rate of the critic (only when a part needs values)."""
    pack_prompts: bool = True
    """Training passes pack the samples of a prompt into one sequence (the prompt runs once, no padding;
    see docs/training.md). False: one padded row per sequence (slower; the same function)."""
    reference_offload: bool = True
    """With a KL term and full fine-tuning: keep the reference weights in a file in the run directory and
    read them only for the reference pass, so they never share memory with the gradients (one model's
    worth less peak memory, for a file read per step). False: a frozen copy stays in memory."""
    recompute_old_logprobs: bool = False
    """Recompute old log-probs with the trainer even when on-policy (the engine's are used otherwise)."""
    reward_error_warn_frac: float = 0.1
    """Warn (once per run) when the reward fails on more than this fraction of a step's samples. Failed
    samples are always dropped from training and counted as reward/error_samples."""
    max_prompt_tokens: int = 512
    """Prompts longer than this are skipped and counted, never truncated."""
    engine: str = "hf"
    """Generation engine: hf or vllm."""
    precision: str = "fp32"
    """fp32, or bf16: matmuls of generation and of the training passes run under bfloat16 autocast
    (weights, gradients and optimizer states stay float32). Faster where the CPU has bf16 units (see
    benchmarks/README.md for its speed and its effect on log-probabilities and learning)."""
    seed: int = 0
    """Seed of everything: data order, sampling, initialisation."""
    threads: int = 2
    """torch CPU threads."""
    eval_every: int = 10
    """Evaluate on the held-out split every this many steps (and before and after); 0 = never."""
    eval_prompts: int = 100
    """Held-out prompts per evaluation."""
    eval_samples: int = 1
    """Samples per held-out prompt (pass@k is reported for k = 1 and k = eval_samples)."""
    eval_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.7))
    """Sampling for evaluation."""
    save_every: int = 10
    """Checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many checkpoints to keep."""
    max_bad_updates: int = 3
    """Stop after this many updates in a row with a non-finite loss or gradient."""
    log_entropy: bool = True
    """Compute the policy entropy each micro-batch for the metrics (costs a softmax over the vocabulary)."""
    log_samples: int = 4
    """Completions written to samples.jsonl per step."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs the tracking extra)."""
    wandb_project: str | None = None
    """Also log to this wandb project (needs the tracking extra)."""


def _default_algo() -> AlgoConfig:
    from anypo.algorithms import PRESETS

    return PRESETS["grpo"].build()


@dataclass(frozen=True)
class EvalConfig:
    """pass@k of a model on a task's held-out split."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to evaluate (a trained run's `final/` directory works too)."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """The task whose held-out split is used."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.7))
    """Sampling settings for the evaluation samples."""
    num_prompts: int = 100
    """Held-out prompts to evaluate (at most the split's size)."""
    samples: int = 8
    """n: samples per prompt; pass@k is reported for k = 1, 2, 4, ... up to n."""
    batch_prompts: int = 8
    """Prompts per generation call (memory knob)."""
    seed: int = 0
    """Sampling seed."""
    threads: int = 2
    """torch CPU threads."""
    out_dir: str = "runs"
    """Where the run directory is created."""
    name: str = "eval"
    """Run name; the directory is <out_dir>/<name>-<timestamp>."""
    progress: bool = True
    """Show a progress bar."""


def config_classes() -> dict[str, type]:
    """Every dataclass a saved config may contain, by class name (for re-loading config.json)."""
    from anypo import registry

    classes: dict[str, type] = {
        c.__name__: c for c in (TrainConfig, EvalConfig, AlgoConfig, ModelConfig, TaskConfig, SamplingConfig)
    }
    for kind in registry.REGISTRIES:
        try:
            reg = registry.registry(kind)
        except ImportError:
            continue
        for name in reg.names():
            cls = reg.get(name)[1]
            classes[cls.__name__] = cls
    return classes


def from_jsonable(data):
    """Inverse of ``anypo.runs.to_jsonable`` for configs: rebuild dataclasses from their ``_type``."""
    if isinstance(data, dict) and "_type" in data:
        classes = config_classes()
        cls = classes.get(data["_type"])
        if cls is None:
            raise ValueError(f"config.json names an unknown class {data['_type']!r}; was it written by a newer anypo?")
        import dataclasses

        kw = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                v = from_jsonable(data[f.name])
                kw[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**kw)
    if isinstance(data, list):
        return [from_jsonable(v) for v in data]
    if isinstance(data, dict):
        return {k: from_jsonable(v) for k, v in data.items()}
    return data
