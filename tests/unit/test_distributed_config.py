"""The distributed options without starting anything: the CLI fills ``TrainConfig.dist``, bad values give
one line each naming the field, the single-process path never imports ray, and the row split and
metric combination of the learner group (``anypo.distributed.learner``) by hand."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from anypo.algorithms import PRESETS
from anypo.config import DistConfig, TrainConfig
from anypo.distributed import dist_config_problems


def test_the_cli_fills_the_dist_options_and_dispatches_to_the_distributed_train(monkeypatch, tmp_path):
    import anypo.distributed
    from anypo import cli

    seen = {}

    def fake_train(cfg, resume=None):
        seen["cfg"] = cfg
        (tmp_path / "README.md").write_text("# fake\n")
        return tmp_path

    monkeypatch.setattr(anypo.distributed, "train", fake_train)
    args = ["train", "grpo", "--dist.backend", "ray", "--dist.rollout-workers", "3", "--dist.learners", "2"]
    assert cli.main([*args, "--dist.address", "auto", "--steps", "1"]) == 0
    d = seen["cfg"].dist
    assert (d.backend, d.rollout_workers, d.learners, d.address) == ("ray", 3, 2, "auto")
    cfg = TrainConfig()
    assert cli.train_fn(cfg) is not fake_train  # backend none: the loop of the preset's kind
    assert cli.train_fn(dataclasses.replace(cfg, dist=DistConfig(backend="ray"))) is fake_train


def test_bad_dist_values_are_one_line_each_naming_the_field():
    cfg = TrainConfig(dist=DistConfig(backend="ray", rollout_workers=0, learners=-1, placement="TIGHT", timeout_s=0))
    problems = dist_config_problems(cfg)
    assert any(p.startswith("dist.rollout-workers must be >= 1") for p in problems)
    assert any(p.startswith("dist.learners must be >= 1") for p in problems)
    assert any(p.startswith("dist.placement must be one of") for p in problems)
    assert any(p.startswith("dist.timeout-s must be > 0") for p in problems)
    assert dist_config_problems(TrainConfig(dist=DistConfig(backend="mpi"))) == [
        "dist.backend must be 'none' or 'ray', got 'mpi'"
    ]
    assert dist_config_problems(TrainConfig()) == []
    assert dist_config_problems(TrainConfig(dist=DistConfig(backend="ray"))) == []


def test_parts_the_distributed_loop_does_not_run_yet_are_refused():
    ppo = [n for n, p in PRESETS.items() if p.kind == "online" and p.build().needs("values")]
    assert ppo, "a preset with a critic"
    cfg = TrainConfig(algo=PRESETS[ppo[0]].build(), dist=DistConfig(backend="ray"))
    assert any("needs_values" in p for p in dist_config_problems(cfg))


def test_the_vllm_engine_in_the_rollout_actors_needs_vllm_installed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    cfg = TrainConfig(engine="vllm", dist=DistConfig(backend="ray"))
    (problem,) = [p for p in dist_config_problems(cfg) if "vllm" in p]
    assert problem.startswith("engine vllm in the rollout actors needs vLLM installed")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    assert not [p for p in dist_config_problems(cfg) if "vllm" in p]


def test_the_learners_recompute_old_logprobs_exactly_where_the_actors_engine_is_not_exact():
    """A learner holds no engine; ``ActorsEngine`` answers ``logprobs_exact`` for the actors' one, by the
    rule of each engine (docs/engines.md): hf always; vLLM's processed log-probs are the contract's only
    when nothing is truncated (top_k 0 and top_p 1), at any temperature."""
    from anypo.distributed.learner import ActorsEngine
    from anypo.engines.base import SamplingConfig

    plain, top_p, top_k = SamplingConfig(temperature=0.7), SamplingConfig(top_p=0.9), SamplingConfig(top_k=20)
    assert [ActorsEngine("hf").logprobs_exact(s) for s in (plain, top_p, top_k)] == [True, True, True]
    assert [ActorsEngine("vllm").logprobs_exact(s) for s in (plain, top_p, top_k)] == [True, False, False]


def test_the_single_process_path_does_not_import_ray():
    code = "import sys, anypo.cli, anypo.train, anypo.config, anypo.distributed; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("n", "world", "expected"),
    [
        (7, 2, [[0, 1, 2, 3], [4, 5, 6]]),
        (8, 2, [[0, 1, 2, 3], [4, 5, 6, 7]]),
        (1, 2, [[0], []]),
        (5, 3, [[0, 1], [2, 3], [4]]),
    ],
)
def test_rank_rows_are_contiguous_blocks_differing_by_at_most_one(n, world, expected):
    """By hand: n = world * q + r rows; the first r ranks take q + 1 rows, the others q, in order."""
    from anypo.distributed.learner import rank_rows

    assert [rank_rows(n, r, world).tolist() for r in range(world)] == expected


def test_metrics_of_the_ranks_combine_by_their_reductions():
    """By hand: token_mean / seq_mean / sum parts are already weighted by the global counts and add
    (0.25 + 0.5 = 0.75, 1 + 2 = 3); max and min keep the extremes; a key only one rank has is its value."""
    from anypo.distributed.learner import combine_metrics

    r0 = ({"a": 0.25, "b": 1.0, "hi": 3.0, "lo": -1.0}, {"a": "token_mean", "b": "sum", "hi": "max", "lo": "min"})
    r1 = ({"a": 0.5, "b": 2.0, "hi": 5.0, "lo": 0.0, "c": 7.0}, {**r0[1], "c": "seq_mean"})
    assert combine_metrics([r0, r1]) == {"a": 0.75, "b": 3.0, "hi": 5.0, "lo": -1.0, "c": 7.0}


def test_split_calls_put_the_blocks_of_a_call_back_in_prompt_order():
    """By hand: block 0 answers prompts 0-1 (n = 1, responses of 2 and 1 tokens), block 1 prompt 2 (3
    tokens); the joined call has prompt_index 0, 1, 2 and every response right-padded to 3 tokens with
    the pad id (9), mask 0 and log-prob 0."""
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'anypo[ray]')")
    import torch

    from anypo.distributed.ray_run import concat_generations
    from anypo.engines.base import Generation

    g0 = Generation(
        prompt_index=torch.tensor([0, 1]),
        response_ids=torch.tensor([[5, 6], [7, 9]]),
        response_mask=torch.tensor([[1, 1], [1, 0]]),
        logprobs=torch.tensor([[-1.0, -2.0], [-3.0, 0.0]]),
        truncated=torch.tensor([True, False]),
    )
    g1 = Generation(
        prompt_index=torch.tensor([0]),
        response_ids=torch.tensor([[1, 2, 3]]),
        response_mask=torch.tensor([[1, 1, 1]]),
        logprobs=torch.tensor([[-0.5, -0.25, -0.125]]),
        truncated=torch.tensor([True]),
    )
    out = concat_generations([g0, g1], [0, 2], pad_id=9)
    assert out.prompt_index.tolist() == [0, 1, 2]
    assert out.response_ids.tolist() == [[5, 6, 9], [7, 9, 9], [1, 2, 3]]
    assert out.response_mask.tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1]]
    assert out.logprobs.tolist() == [[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0], [-0.5, -0.25, -0.125]]
    assert out.truncated.tolist() == [True, False, True]


def test_a_distributed_run_refuses_unsupported_parts_before_starting_ray(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'anypo[ray]')")
    import ray

    from anypo.distributed import train
    from anypo.errors import UserError

    cfg = TrainConfig(dist=DistConfig(backend="ray"))
    with pytest.raises(UserError, match="model.lora-rank 0"):
        train(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, lora_rank=4)))
    assert not ray.is_initialized()
