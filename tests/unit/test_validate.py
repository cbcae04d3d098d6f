"""anypo.validate: every check of a TrainConfig, each on a config that violates exactly that check.

The base config is valid; each case changes one field and expects exactly one problem whose message
names the option (as its command-line flag) and says what to do.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging

import pytest

from anypo.advantages import GAEAdvantage
from anypo.algorithms import PRESETS
from anypo.config import AlgoConfig, TrainConfig
from anypo.engines.base import SamplingConfig
from anypo.errors import UserError, is_user_error, message
from anypo.losses import PPOClip, Reinforce
from anypo.models import ModelConfig
from anypo.validate import check_train_config, train_config_problems


def base() -> TrainConfig:
    """A valid config: the grpo preset on the tiny model (G=8, B=4, defaults elsewhere)."""
    return TrainConfig(algo=PRESETS["grpo"].build(), model=ModelConfig(name="tiny"))


def with_(cfg, **changes):
    """``dataclasses.replace`` with dotted paths: ``with_(cfg, **{"algo.ppo_epochs": 2})``."""
    nested: dict[str, dict] = {}
    flat = {}
    for path, value in changes.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[path] = value
    for head, sub in nested.items():
        flat[head] = with_(getattr(cfg, head), **sub)
    return dataclasses.replace(cfg, **flat)


def _loop_checks() -> dict:
    """The config check of each loop kind (``anypo.cli.LOOPS``): the function its train() runs first."""
    from anypo.train_pref import pref_config_problems
    from anypo.train_pref_online import online_pref_config_problems
    from anypo.train_rm import rm_config_problems

    return {
        "online": train_config_problems,
        "preference": pref_config_problems,
        "preference_online": online_pref_config_problems,
        "reward_model": rm_config_problems,
    }


def test_the_base_config_and_every_preset_are_valid():
    """Each preset builds the config of its loop as ``anypo train`` does (the class of
    ``cli.loop_of(kind)``) and passes that loop's check; a new loop kind must add its check here."""
    from anypo.cli import LOOPS, loop_of

    assert train_config_problems(base()) == []
    check_train_config(base())  # does not raise
    checks = _loop_checks()
    assert set(checks) == set(LOOPS)
    kinds = set()
    for name, preset in PRESETS.items():
        config_cls = loop_of(preset.kind)[0]
        cfg = config_cls(algo=preset.build(), model=ModelConfig(name="tiny"), name=name, preset=name)
        assert checks[preset.kind](cfg) == [], name
        kinds.add(preset.kind)
    assert kinds == set(LOOPS)  # both loops' checks ran on presets


def test_a_preset_of_another_loop_is_one_clear_problem():
    """A preference preset's PrefAlgoConfig in the online loop's TrainConfig: one message naming the
    class and the way out, not an AttributeError."""
    cdpo = PRESETS["cdpo"]
    assert cdpo.kind == "preference"
    problems = train_config_problems(TrainConfig(algo=cdpo.build(), model=ModelConfig(name="tiny")))
    assert len(problems) == 1 and "PrefAlgoConfig" in problems[0] and "AlgoConfig" in problems[0], problems


# (case id, changes making exactly one check fail, a word of the message: the option's flag)
CASES = [
    ("lr_negative", {"lr": -1e-5}, "--lr"),
    ("lr_zero", {"lr": 0.0}, "--lr"),
    ("lr_nan", {"lr": float("nan")}, "--lr"),
    ("steps", {"steps": 0}, "--steps"),
    ("prompts_per_step", {"prompts_per_step": 0}, "--prompts-per-step"),
    ("samples_per_prompt", {"samples_per_prompt": 0}, "--samples-per-prompt"),
    ("micro_batch_size", {"micro_batch_size": 0}, "--micro-batch-size"),
    ("minibatch_prompts_zero", {"algo.minibatch_prompts": 0}, "--algo.minibatch-prompts"),
    ("ppo_epochs", {"algo.ppo_epochs": 0}, "--algo.ppo-epochs"),
    ("max_grad_norm", {"max_grad_norm": 0.0}, "--max-grad-norm"),
    ("eval_every", {"eval_every": -1}, "--eval-every"),
    ("eval_samples", {"eval_samples": 0}, "--eval-samples"),
    ("eval_prompts", {"eval_prompts": 0}, "--eval-prompts"),
    ("save_every", {"save_every": 0}, "--save-every"),
    ("keep_checkpoints", {"keep_checkpoints": 0}, "--keep-checkpoints"),
    ("threads", {"threads": 0}, "--threads"),
    ("warmup_steps", {"warmup_steps": -1}, "--warmup-steps"),
    ("max_prompt_tokens", {"max_prompt_tokens": 0}, "--max-prompt-tokens"),
    ("max_bad_updates", {"max_bad_updates": 0}, "--max-bad-updates"),
    ("log_samples", {"log_samples": -1}, "--log-samples"),
    ("budget_tokens", {"budget_tokens": -5}, "--budget-tokens"),
    ("budget_seconds", {"budget_seconds": -1.0}, "--budget-seconds"),
    ("precision", {"precision": "fp16"}, "--precision"),
    ("lr_schedule", {"lr_schedule": "cosine_restarts"}, "--lr-schedule"),
    ("optimizer", {"optimizer": "sgd"}, "--optimizer"),
    ("weight_decay", {"weight_decay": -0.1}, "--weight-decay"),
    ("betas", {"betas": (0.9, 1.0)}, "--betas"),
    ("engine", {"engine": "sglang"}, "--engine"),
    ("temperature", {"sampling.temperature": 0.0}, "--sampling.temperature"),
    ("max_new_tokens", {"sampling.max_new_tokens": 0}, "--sampling.max-new-tokens"),
    ("top_p_zero", {"sampling.top_p": 0.0}, "--sampling.top-p"),
    ("top_p_above_one", {"sampling.top_p": 1.5}, "--sampling.top-p"),
    ("top_k", {"sampling.top_k": -1}, "--sampling.top-k"),
    ("eval_temperature", {"eval_sampling.temperature": -1.0}, "--eval-sampling.temperature"),
    ("task_unknown", {"task.name": "additon"}, "--task.name"),
    ("task_file_without_path", {"task.name": "file"}, "--task.path"),
    ("task_missing_dataset", {"task.name": "/no/such/data.jsonl"}, "--task.name"),
    ("task_missing_heldout", {"task.heldout_path": "/no/such/test.jsonl"}, "--task.heldout-path"),
    ("task_num_heldout", {"task.num_heldout": -1}, "--task.num-heldout"),
    ("task_num_train", {"task.num_train": 0}, "--task.num-train"),
    ("model_missing_dir", {"model.name": "/no/such/model"}, "--model.name"),
    ("model_unknown_name", {"model.name": "smollm2-135m"}, "--model.name"),
    ("model_dtype", {"model.dtype": "float64"}, "--model.dtype"),
    ("lora_rank", {"model.lora_rank": -1}, "--model.lora-rank"),
    ("reward_unknown", {"rewards": ("math_anser=1",)}, "--rewards"),
    ("reward_weight", {"rewards": ("math_answer=abc",)}, "--rewards"),
    ("reward_missing_file", {"rewards": ("/no/such/reward.py:score",)}, "--rewards"),
]


@pytest.mark.parametrize("changes,option", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_check_names_its_option(changes, option):
    problems = train_config_problems(with_(base(), **changes))
    assert len(problems) == 1, problems
    assert option in problems[0], problems[0]
    with pytest.raises(UserError) as e:
        check_train_config(with_(base(), **changes))
    assert e.value.problems == problems and str(e.value) == problems[0]  # one problem: one line
    assert "\n" not in str(e.value)


def test_suggestions_are_given_where_a_name_is_close():
    (task,) = train_config_problems(with_(base(), **{"task.name": "additon"}))
    assert "addition" in task
    (model,) = train_config_problems(with_(base(), **{"model.name": "smollm2-135m"}))
    assert "smollm2-135m-instruct" in model
    (reward,) = train_config_problems(with_(base(), rewards=("math_anser=1",)))
    assert "math_answer" in reward


def test_group_relative_advantage_needs_two_samples_per_prompt():
    """G = 1 makes every group-relative advantage 0 (A_i = R_i - mean of a group of one = 0)."""
    for preset in ("grpo", "dr_grpo", "rloo", "dapo"):
        cfg = with_(TrainConfig(algo=PRESETS[preset].build(), model=ModelConfig(name="tiny")), samples_per_prompt=1)
        (problem,) = train_config_problems(cfg)
        assert "--samples-per-prompt" in problem and "group-relative" in problem and "2 or more" in problem
    assert train_config_problems(with_(base(), samples_per_prompt=2)) == []
    # a baseline that is not group-relative works with one sample per prompt
    gae = AlgoConfig(advantage=GAEAdvantage(), policy_loss=PPOClip(), value_loss=PRESETS["ppo"].build().value_loss)
    assert train_config_problems(dataclasses.replace(base(), algo=gae, samples_per_prompt=1)) == []


def test_passk_needs_groups_of_at_least_k():
    """The passk preset trains pass@4 (k = 4): 3 samples per prompt have no 4-subset, 4 do."""
    cfg = TrainConfig(algo=PRESETS["passk"].build(), model=ModelConfig(name="tiny"))
    (problem,) = train_config_problems(with_(cfg, samples_per_prompt=3))
    assert "--samples-per-prompt is 3" in problem and "at least 4" in problem
    assert train_config_problems(with_(cfg, samples_per_prompt=4)) == []


def test_minibatch_prompts_must_divide_the_rollout_batch():
    """B = 6 prompts: sizes 1, 2, 3, 6 divide it, 4 and 5 do not; a size >= B is the whole batch."""
    cfg = with_(base(), prompts_per_step=6)
    for size in (None, 1, 2, 3, 6, 7, 12):
        assert train_config_problems(with_(cfg, **{"algo.minibatch_prompts": size})) == [], size
    for size in (4, 5):
        (problem,) = train_config_problems(with_(cfg, **{"algo.minibatch_prompts": size}))
        assert "--algo.minibatch-prompts" in problem and "1, 2, 3, 6" in problem


def test_on_policy_only_parts_are_refused_with_several_updates():
    """REINFORCE (no ratio) is unbiased only on-policy: ppo_epochs 2, or 2 mini-batches of B = 4, is refused."""
    algo = dataclasses.replace(PRESETS["grpo"].build(), policy_loss=Reinforce(), regularizers=())
    cfg = dataclasses.replace(base(), algo=algo)
    assert train_config_problems(cfg) == []
    for changes in ({"algo.ppo_epochs": 2}, {"algo.minibatch_prompts": 2}):
        (problem,) = train_config_problems(with_(cfg, **changes))
        assert "policy_loss 'reinforce'" in problem and "on-policy" in problem and "--algo.ppo-epochs" in problem
    assert train_config_problems(with_(cfg, **{"algo.minibatch_prompts": 4})) == []  # one mini-batch of 4


def test_a_critic_needs_a_value_loss_and_a_positive_critic_lr():
    ppo = PRESETS["ppo"].build()
    (problem,) = train_config_problems(dataclasses.replace(base(), algo=dataclasses.replace(ppo, value_loss=None)))
    assert "value_loss" in problem and "advantage 'gae'" in problem
    (problem,) = train_config_problems(dataclasses.replace(base(), algo=ppo, critic_lr=0.0))
    assert "--critic-lr" in problem
    assert train_config_problems(dataclasses.replace(base(), critic_lr=0.0)) == []  # no critic, not checked


def test_eval_sampling_is_checked_only_when_evaluating():
    bad = SamplingConfig(temperature=0.0)
    assert train_config_problems(dataclasses.replace(base(), eval_sampling=bad, eval_every=0)) == []
    assert len(train_config_problems(dataclasses.replace(base(), eval_sampling=bad, eval_every=5))) == 1


def test_vllm_engine_needs_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    (problem,) = train_config_problems(with_(base(), engine="vllm"))
    assert "--engine" in problem and "vllm extra" in problem and "--engine hf" in problem


def test_engine_precision_values_and_where_bf16_applies(monkeypatch):
    """fp32, bf16 and auto; bf16 only for the in-process hf engine and with float32 training (bf16
    autocast already samples in bfloat16); auto is accepted everywhere (it resolves to fp32 where bf16
    does not apply)."""
    from anypo.engines import ENGINE_PRECISIONS
    from anypo.validate import ENGINE_PRECISIONS as CHECKED

    assert CHECKED == ENGINE_PRECISIONS  # the engines export the list the check uses
    assert train_config_problems(with_(base(), engine_precision="bf16")) == []
    assert train_config_problems(with_(base(), engine_precision="auto", precision="bf16")) == []
    (problem,) = train_config_problems(with_(base(), engine_precision="fp16"))
    assert problem == "--engine-precision is 'fp16': choose fp32, bf16, auto"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # vllm "installed"
    (problem,) = train_config_problems(with_(base(), engine="vllm", engine_precision="bf16"))
    assert "--engine-precision bf16" in problem and "--engine hf" in problem
    (problem,) = train_config_problems(with_(base(), precision="bf16", engine_precision="bf16"))
    assert "--precision bf16" in problem and "use one of the two" in problem


def test_model_directories_and_hub_ids(tmp_path, monkeypatch, caplog):
    (tmp_path / "empty").mkdir()
    (problem,) = train_config_problems(with_(base(), **{"model.name": str(tmp_path / "empty")}))
    assert "config.json" in problem
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert train_config_problems(with_(base(), **{"model.name": str(tmp_path / "model")})) == []
    assert train_config_problems(with_(base(), **{"model.name": "smollm2-135m-instruct"})) == []
    # a hub id is accepted; offline it is only a warning (it may be in the Hugging Face cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.WARNING, logger="anypo.validate"):
        assert train_config_problems(with_(base(), **{"model.name": "someone/not-cached-model"})) == []
    assert "HF_HUB_OFFLINE" in caplog.text and "someone/not-cached-model" in caplog.text
    caplog.clear()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with caplog.at_level(logging.WARNING, logger="anypo.validate"):
        assert train_config_problems(with_(base(), **{"model.name": "someone/not-cached-model"})) == []
    assert caplog.text == ""


def test_dataset_tasks_are_checked_without_reading_them(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("this is not JSON, but the validator does not read rows\n")
    assert train_config_problems(with_(base(), **{"task.name": str(data)})) == []
    assert train_config_problems(with_(base(), **{"task.name": "file", "task.path": str(data)})) == []
    (problem,) = train_config_problems(with_(base(), **{"task.name": "file", "task.path": str(tmp_path / "x.jsonl")}))
    assert "--task.path" in problem and "no such file" in problem


def test_reasoning_gym_generator_names_are_checked():
    pytest.importorskip("reasoning_gym")
    assert train_config_problems(with_(base(), **{"task.name": "rg:leg_counting"})) == []
    (problem,) = train_config_problems(with_(base(), **{"task.name": "rg:leg_countin"}))
    assert "--task.name" in problem and "rg:leg_counting" in problem


def test_every_problem_is_listed_one_per_line():
    cfg = with_(base(), lr=-1.0, steps=0, **{"task.name": "nope", "sampling.top_p": 2.0})
    with pytest.raises(UserError) as e:
        check_train_config(cfg)
    lines = str(e.value).splitlines()
    assert lines[0] == "4 problems:" and len(lines) == 5
    for option in ("--lr", "--steps", "--task.name", "--sampling.top-p"):
        assert sum(option in line for line in lines[1:]) == 1, option


# ---- anypo.errors: which exceptions are the user's ----


def _raise_from(module: str, exc: BaseException, function: str = "f") -> BaseException:
    """An exception raised by a function whose module is ``module`` (as the traceback sees it)."""
    namespace = {"__name__": module, "exc": exc}
    exec(compile(f"def {function}():\n    raise exc\n", f"<{module}>", "exec"), namespace)
    try:
        namespace[function]()
    except BaseException as e:
        return e
    raise AssertionError("did not raise")


def test_user_errors_are_loading_errors_not_bugs():
    assert is_user_error(UserError("x"))  # wherever it comes from
    assert is_user_error(_raise_from("anypo.tasks.data", ValueError("row 3: invalid JSON")))
    assert is_user_error(_raise_from("anypo.tasks", KeyError("unknown task 'x'")))
    assert is_user_error(_raise_from("anypo.models", FileNotFoundError("no model")))
    assert is_user_error(_raise_from("anypo.losses.token", ValueError("bad field"), "__post_init__"))
    assert is_user_error(_raise_from("anypo.trainer_setup", ValueError("every prompt is long"), "tokenize_prompts"))
    # the same types raised by the loop or the maths are bugs: the traceback is kept
    assert not is_user_error(_raise_from("anypo.train", KeyError("train/skipped_updates")))
    assert not is_user_error(_raise_from("anypo.losses.token", ValueError("shape")))
    assert not is_user_error(_raise_from("anypo.trainer_setup", ValueError("x"), "plot_metrics"))
    assert not is_user_error(_raise_from("anypo.engines.hf", ValueError("x")))
    assert not is_user_error(_raise_from("anypo.cli", KeyError("x")))  # came out of what the CLI ran
    assert not is_user_error(_raise_from("torch.optim.adam", ValueError("Invalid learning rate")))  # no anypo frame
    assert not is_user_error(_raise_from("anypo.tasks", RuntimeError("x")))  # not a user-error type
    assert message(KeyError("unknown task 'x'")) == "unknown task 'x'"  # without str(KeyError)'s quotes
