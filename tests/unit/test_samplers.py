"""Samplers: uniform shuffling (without replacement, deterministic, resumable) and DAPO's dynamic
sampling (spec 2.3: of q1 = [1,0,1,0], q2 = [1,1,1,1], q3 = [0,0,0,0] only q1 is kept)."""

from __future__ import annotations

import json

import pytest
import torch

from anypo.registry import get, names
from anypo.types import RolloutBatch


def make(name: str, num_prompts: int = 10, prompts_per_step: int = 4, seed: int = 0, **cfg):
    Cls, Cfg = get("sampler", name)
    return Cls(Cfg(**cfg), num_prompts, prompts_per_step, seed)


@pytest.mark.parametrize("name", ["uniform", "dynamic_sampling"])
def test_each_epoch_is_a_permutation(name):
    """10 prompts, 4 per step: the first 20 indices are two permutations of 0..9 (steps straddle
    epochs), and the two epochs are shuffled differently."""
    s = make(name)
    drawn = [i for step in range(5) for i in s.next_prompts(step)]
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:]) == list(range(10))
    assert drawn[:10] != drawn[10:]


def test_uniform_is_deterministic_per_seed_and_handles_large_steps():
    a, b, c = make("uniform", seed=3), make("uniform", seed=3), make("uniform", seed=4)
    seq_a = [a.next_prompts(t) for t in range(6)]
    assert seq_a == [b.next_prompts(t) for t in range(6)]
    assert seq_a != [c.next_prompts(t) for t in range(6)]
    big = make("uniform", num_prompts=3, prompts_per_step=7)
    out = big.next_prompts(0)
    assert len(out) == 7 and sorted(out[:3]) == [0, 1, 2] and sorted(out[3:6]) == [0, 1, 2]


@pytest.mark.parametrize("name", ["uniform", "dynamic_sampling"])
def test_resume_from_state_dict(name):
    """A sampler restored from a JSON round-tripped state draws what the uninterrupted one draws."""
    s = make(name, num_prompts=7, prompts_per_step=3, seed=11)
    for t in range(4):
        s.next_prompts(t)
    state = json.loads(json.dumps(s.state_dict()))
    expected = [s.next_prompts(t) for t in range(4, 10)]
    r = make(name, num_prompts=7, prompts_per_step=3, seed=0)
    r.load_state_dict(state)
    assert [r.next_prompts(t) for t in range(4, 10)] == expected
    with pytest.raises(ValueError, match="prompts"):
        make(name, num_prompts=8).load_state_dict(state)


def _groups_batch(groups: dict[int, list[float]], **extras) -> RolloutBatch:
    gid = torch.tensor([g for g, rs in groups.items() for _ in rs])
    R = torch.tensor([r for rs in groups.values() for r in rs])
    return RolloutBatch(torch.ones(len(R), 3), gid, R, extras=extras)


def test_dynamic_sampling_spec_groups():
    """q1 (id 10) mixed -> kept; q2 (id 3) all correct and q3 (id 7) all wrong -> dropped."""
    s = make("dynamic_sampling")
    batch = _groups_batch({10: [1, 0, 1, 0], 3: [1, 1, 1, 1], 7: [0, 0, 0, 0]})
    keep = s.keep(batch)
    assert keep.dtype == torch.bool and keep.tolist() == [True] * 4 + [False] * 8
    assert s.state_dict()["kept_groups"] == 1 and s.state_dict()["dropped_groups"] == 2


def test_dynamic_sampling_metric_from_extras():
    """Shaped rewards differ inside an all-correct group; the 'correct' metric still drops it."""
    groups = {1: [1.0, 0.8, 0.9], 2: [0.0, 1.0, 0.0]}
    correct = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    by_tensor = _groups_batch(groups, correct=torch.tensor(correct))
    by_components = _groups_batch(groups, components=[{"correct": c} for c in correct])
    assert make("dynamic_sampling").keep(by_tensor).tolist() == [True] * 6  # on rewards
    for batch in (by_tensor, by_components):
        assert make("dynamic_sampling", metric="correct").keep(batch).tolist() == [False] * 3 + [True] * 3
    with pytest.raises(KeyError, match="accuracy"):
        make("dynamic_sampling", metric="accuracy").keep(by_tensor)


def test_max_draws_on_every_sampler():
    """The loop reads cfg.max_draws from every sampler config: uniform 1, dynamic sampling 10."""
    for name in names("sampler"):
        assert get("sampler", name)[1]().max_draws >= 1
    assert get("sampler", "uniform")[1]().max_draws == 1
    assert get("sampler", "dynamic_sampling")[1]().max_draws == 10
    with pytest.raises(ValueError, match="max_draws"):
        get("sampler", "uniform")[1](max_draws=0)
