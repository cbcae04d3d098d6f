"""The stale-rollout schedule (``Replay``) and its queue (``StaleRollouts``), against schedules
written out by hand from Trinity-RFT's ``sync_interval`` / ``sync_offset`` semantics."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from anypo.algorithms import PRESETS
from anypo.config import AlgoConfig, TrainConfig, from_jsonable
from anypo.rollout.replay import Replay, StaleRollouts
from anypo.runs import to_jsonable
from anypo.types import PartConfig, RolloutBatch
from anypo.validate import train_config_problems


@pytest.mark.parametrize(
    ("k", "d", "versions"),
    [
        # K = 1, d = 0: step t trains on what the weights after t - 1 steps generated (on-policy)
        (1, 0, [0, 1, 2, 3, 4, 5]),
        # one-step off-policy: steps 1 and 2 both use the initial weights, then one step behind
        (1, 1, [0, 0, 1, 2, 3, 4]),
        # weights refreshed every 3 steps: windows {1, 2, 3} and {4, 5, 6} use versions 0 and 3
        (3, 0, [0, 0, 0, 3, 3, 3]),
        # K = 2, d = 1: g(t) = 2 floor(max(t - 2, 0) / 2) = 0, 0, 0, 2, 2, 4
        (2, 1, [0, 0, 0, 2, 2, 4]),
    ],
)
def test_schedule_by_hand(k, d, versions):
    """g(t) = K floor(max(t - 1 - d, 0) / K); staleness(t) = t - 1 - g(t), at most K - 1 + d."""
    r = Replay(sync_interval=k, sync_offset=d)
    assert [r.generated_with(t) for t in range(1, 7)] == versions
    stale = [t - 1 - v for t, v in zip(range(1, 7), versions, strict=True)]
    assert [r.staleness(t) for t in range(1, 7)] == stale
    assert max(stale) <= r.max_staleness == k - 1 + d
    assert r.active == (r.max_staleness > 0)


def test_replay_config_errors():
    with pytest.raises(ValueError, match="sync_interval must be an integer >= 1"):
        Replay(sync_interval=0)
    with pytest.raises(ValueError, match="sync_offset must be an integer >= 0"):
        Replay(sync_offset=-1)


def _batch(step: int, version: int) -> RolloutBatch:
    """A 2-row batch whose old log-probs encode who generated it: -(step + version / 10)."""
    lp = torch.full((2, 3), -(step + version / 10))
    return RolloutBatch(
        response_mask=torch.ones(2, 3), group_ids=torch.tensor([0, 0]), rewards=torch.tensor([1.0, 0.0]),
        old_logprobs=lp, extras={"text": ["a", "b"]},
    )  # fmt: skip


class FakeLoop:
    """Counts training steps (the weight version) and generates batches tagged with it."""

    def __init__(self, schedule: Replay, steps: int):
        self.version = 0
        self.calls: list[tuple[int, int]] = []
        self.queue = StaleRollouts(schedule, steps, self.generate)

    def generate(self, step: int):
        self.calls.append((step, self.version))
        return _batch(step, self.version), {"rollout/generated_tokens": 6.0, "reward/mean": float(step)}

    def train(self, step: int):
        batch, m, now = self.queue.next(step)
        self.version += 1  # the update of this step
        return batch, m, now


def test_queue_generates_each_batch_with_the_scheduled_weights():
    """K = 2, d = 1 over 6 steps: g(t) = 0, 0, 0, 2, 2, 4, so batches 1-3 come from version 0
    (generated at step 1), batches 4 and 5 from version 2 (generated at step 3), batch 6 from
    version 4 (step 5). Each batch reaches its
    own step with its generation-time log-probs, its staleness and its own rollout metrics; the
    tokens are counted when they are generated."""
    loop = FakeLoop(Replay(sync_interval=2, sync_offset=1), steps=6)
    stale, queued, tokens = [], [], []
    for step in range(1, 7):
        batch, m, now = loop.train(step)
        assert m["reward/mean"] == step and "rollout/generated_tokens" not in m
        assert torch.equal(batch.old_logprobs, _batch(step, step - 1 - int(batch.staleness[0])).old_logprobs)
        stale.append(now["replay/staleness_mean"])
        queued.append(now["replay/queued_batches"])
        tokens.append(now["rollout/generated_tokens"])
        assert torch.equal(batch.staleness, torch.full((2,), now["replay/staleness_mean"]))
    assert loop.calls == [(1, 0), (2, 0), (3, 0), (4, 2), (5, 2), (6, 4)]
    assert stale == [0.0, 1.0, 2.0, 1.0, 2.0, 1.0]
    # after handing out step t's batch: {2, 3}, {3}, {4, 5}, {5}, {6}, {}: at most K - 1 + d = 2 wait
    assert queued == [2.0, 1.0, 2.0, 1.0, 1.0, 0.0]
    assert tokens == [18.0, 0.0, 12.0, 0.0, 6.0, 0.0]


def test_queue_state_resumes_exactly_and_is_never_copied():
    """Snapshot after step 2 of K = 1, d = 2 (batches 3 and 4 queued), restore it into a new queue:
    steps 3-5 hand out the same batches as the uninterrupted queue. The snapshot's deep copy is the
    snapshot itself (the scaffold deep-copies the step state every step), and changing a handed-out
    batch in place leaves the queued original alone."""
    a = FakeLoop(Replay(sync_offset=2), steps=5)
    a.train(1)
    a.train(2)
    snap = a.queue.state_dict()
    assert copy.deepcopy(snap) is snap and len(snap.entries) == 2
    rest_a = [a.train(s) for s in (3, 4, 5)]
    rest_a[0][0].old_logprobs.add_(100.0)  # a step that changes its batch in place
    assert snap.entries[0].batch.old_logprobs[0, 0] == -3.0

    b = FakeLoop(Replay(sync_offset=2), steps=5)
    b.version = 2
    b.queue.load_state_dict(snap)
    rest_b = [b.train(s) for s in (3, 4, 5)]
    assert b.calls == [(5, 2)]  # only batch 5 was still to be generated (at step 3)
    for (ba, ma, na), (bb, mb, nb) in zip(rest_a[1:], rest_b[1:], strict=True):
        assert torch.equal(ba.old_logprobs, bb.old_logprobs) and ma == mb and na == nb


def test_algo_config_replay_schedule_and_json():
    """The AlgoConfig's own schedule wins; else a part's declared one; two parts that disagree are an
    error; the schedule survives config.json."""

    @dataclasses.dataclass(frozen=True)
    class Needs(PartConfig):
        k: int = 3

        @property
        def replay(self):
            return Replay(sync_interval=self.k)

    grpo = PRESETS["grpo"].build()
    assert not grpo.replay_schedule().active
    declared = dataclasses.replace(grpo, regularizers=(Needs(),))
    assert declared.replay_schedule() == Replay(sync_interval=3)
    both = dataclasses.replace(declared, replay=Replay(sync_offset=1))
    assert both.replay_schedule() == Replay(sync_offset=1)
    clash = dataclasses.replace(grpo, regularizers=(Needs(2), Needs(3)))
    with pytest.raises(ValueError, match="different replay schedules"):
        clash.replay_schedule()
    algo = dataclasses.replace(grpo, replay=Replay(sync_interval=4, sync_offset=1))
    assert from_jsonable(to_jsonable(algo)) == algo
    assert isinstance(from_jsonable(to_jsonable(algo)), AlgoConfig)


def test_config_check_refuses_stale_rollouts_for_on_policy_losses():
    """REINFORCE (rloo) is unbiased only on the current policy's samples: the check names the
    schedule and how to fix it; the same schedule with the clipped ratio of grpo is fine."""
    rloo = dataclasses.replace(PRESETS["rloo"].build(), replay=Replay(sync_interval=4))
    problems = train_config_problems(TrainConfig(algo=rloo))
    assert any("only correct on-policy" in p and "--algo.replay.sync-interval 4" in p for p in problems)
    grpo = dataclasses.replace(PRESETS["grpo"].build(), replay=Replay(sync_interval=4))
    assert not any("replay" in p for p in train_config_problems(TrainConfig(algo=grpo)))
