"""The config check refuses, one line each, a need a part declares that the online loop cannot
provide (so the run fails before anything is loaded, not at step 1), and the needs it provides
only on-policy under a replay schedule."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from anypo.algorithms import PRESETS
from anypo.config import TrainConfig
from anypo.errors import UserError
from anypo.losses import PPOClip
from anypo.rollout.replay import Replay
from anypo.validate import check_train_config, provided_needs, train_config_problems


@dataclass(frozen=True)
class NeedsTelepathy(PPOClip):
    """PPO clip that declares a need no loop provides (test only; https://example.invalid)."""

    @property
    def needs_telepathy(self) -> bool:
        """The loop must read the user's mind."""
        return True


def test_unprovided_need_is_one_clear_problem():
    algo = dataclasses.replace(PRESETS["grpo"].build(), policy_loss=NeedsTelepathy())
    problems = train_config_problems(TrainConfig(algo=algo))
    assert len(problems) == 1
    assert "needs_telepathy" in problems[0] and "does not provide" in problems[0] and "\n" not in problems[0]
    with pytest.raises(UserError, match="needs_telepathy"):
        check_train_config(TrainConfig(algo=algo))


def test_a_need_declared_false_is_no_problem():
    """mdpo_lm with kl='sampled' declares needs_old_full_logprobs = False: nothing to refuse."""
    from anypo.losses import MDPOLM

    algo = dataclasses.replace(PRESETS["grpo"].build(), policy_loss=MDPOLM(kl="sampled"))
    assert train_config_problems(TrainConfig(algo=algo)) == []


@pytest.mark.parametrize("name", sorted(n for n, p in PRESETS.items() if p.kind == "online"))
def test_every_online_preset_declares_only_provided_needs(name):
    algo = PRESETS[name].build()
    for part in algo.parts():
        for attr in dir(type(part)):
            if attr.startswith("needs_") and getattr(part, attr):
                assert attr.removeprefix("needs_") in provided_needs(), (name, attr)
    assert train_config_problems(TrainConfig(algo=algo)) == []


@pytest.mark.parametrize(
    ("preset", "need"),
    [
        ("dcpo", "needs_old_tempered_logprobs"),
        ("lp_reg", "needs_old_proxy_logprobs"),
        ("mdpo_lm", "needs_old_full_logprobs"),
    ],
)
def test_behaviour_inputs_after_generation_are_refused_under_replay(preset, need):
    algo = dataclasses.replace(PRESETS[preset].build(), replay=Replay(sync_interval=2))
    (problem,) = train_config_problems(TrainConfig(algo=algo))
    assert need in problem and "--algo.replay.sync-interval 1" in problem
