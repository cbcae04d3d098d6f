"""AEPO (arXiv 2510.08141): the controller's selection (spec section 5 worked example), the rollout part's
splice on a scripted engine, the advantage by hand, the generator's per-call temperature, state, errors.

The scripted engine runs on a character tokenizer (one token per character), so the exact prompts and
response tokens of every row can be read back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scripted_engine import char_generation, exact_reward, group_rollout, prompt_texts, rows_text

from anypo.advantages.aepo import AEPOAdvantage, aepo
from anypo.algorithms import PRESETS
from anypo.engines.base import SamplingConfig
from anypo.rollout import Request
from anypo.rollout.aepo import AEPO_GROUP_REWARDS, AEPO_REINFORCE, AEPOController, AEPOControllerConfig, controller_rows
from anypo.tasks.base import Example
from anypo.types import RolloutBatch


class TempEngine:
    """``reply(prompt_text, k, temperature) -> str``; every character's log-prob is -0.5. Records
    (prompt texts, n, temperature) per call; ``model`` stands for the policy module."""

    def __init__(self, reply):
        self.reply, self.calls, self.model = reply, [], torch.nn.Linear(1, 1)

    def generate(self, prompts, n, sampling, seed=None):
        texts = prompt_texts(prompts)
        self.calls.append((texts, n, sampling.temperature))
        return char_generation([self.reply(t, k, sampling.temperature) for t in texts for k in range(n)], n)


def make_groups(reply, examples, G=2):
    engine = TempEngine(reply)
    sampling = SamplingConfig(max_new_tokens=16, temperature=1.0)
    return group_rollout(engine, examples, exact_reward, G, sampling), engine


def text_of(batch: RolloutBatch, r: int, field: str = "response") -> str:
    return rows_text(batch, field)[r]


def ctrl_batch(rewards, n):
    R = torch.tensor(rewards, dtype=torch.float32)
    return RolloutBatch(
        response_mask=torch.ones(len(rewards), 2, dtype=torch.long),
        group_ids=torch.arange(len(rewards) // n).repeat_interleave(n),
        rewards=R,
    )


def test_controller_selection_matches_the_spec_example():
    """Spec section 5: 8 prompts x 5, floor(8/4) = 2 controller prompts, rewards [1,0,0,1,0 | 1,1,1,1,1].
    Group 1: mean 0.4, unbiased std sqrt((2*0.36 + 3*0.16)/4) = sqrt(0.3) = 0.547723, so
    A = 0.6/0.547723 = 1.095445 (rows 0, 3) and -0.4/0.547723 = -0.730297; group 2 has std 0, A = 0.
    S = {0, 3}. H_prev = 0.3 <= 0.5: T = 1.2, k = min(60, 2) = 2. H_prev = 0.7: T = 0.8, k = 2 // 2 = 1."""
    r = np.array([1, 0, 0, 1, 0.0])
    a = (r - r.mean()) / (r.std(ddof=1) + 1e-6)
    np.testing.assert_allclose(a, [1.0954, -0.7303, -0.7303, 1.0954, -0.7303], atol=1e-4)
    cfg = AEPOControllerConfig()
    ctrl = ctrl_batch([1, 0, 0, 1, 0, 1, 1, 1, 1, 1], 5)
    assert cfg.temperature(0.3) == 1.2 and controller_rows(cfg, ctrl, 0.3) == [0, 3]
    assert cfg.temperature(0.7) == 0.8 and controller_rows(cfg, ctrl, 0.7) == [0]
    assert cfg.temperature(0.5) == 1.2  # "entropy <= entropy_base" in the code
    assert controller_rows(AEPOControllerConfig(reinforce_sample_num=1), ctrl, 0.3) == [0]
    # equal groups: nothing positive, no crash
    assert controller_rows(cfg, ctrl_batch([0, 0, 0, 1, 1, 1], 3), 0.3) == []


def test_advantage_by_hand():
    """Rows 0-3: group 7 as the splice left it (row 0 a controller row; rows 1-3 kept, their whole group's
    rewards (1, 0, 0, 1) recorded): mean 0.5, unbiased std sqrt(1/3) = 0.577350, so row 1 (R 0) gets
    -0.5/0.577350 = -0.866025, row 3 (R 1) +0.866025; the controller row gets 1 whatever its reward.
    Rows 4-5: group 9 untouched, rewards (1, 0): mean 0.5, std 0.707107, A = +-0.707107 (eps 1e-6)."""
    mask = torch.tensor([[1, 1, 0]] * 6)
    batch = RolloutBatch(
        response_mask=mask,
        group_ids=torch.tensor([7, 7, 7, 7, 9, 9]),
        rewards=torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64),
        extras={
            AEPO_REINFORCE: [True, False, False, False, False, False],
            AEPO_GROUP_REWARDS: [None, (1.0, 0.0, 0.0, 1.0), (1.0, 0.0, 0.0, 1.0), (1.0, 0.0, 0.0, 1.0), None, None],
        },
    )
    s = np.sqrt(1 / 3) + 1e-6
    t = np.sqrt(0.5) + 1e-6
    expected = np.array([1.0, -0.5 / s, -0.5 / s, 0.5 / s, 0.5 / t, -0.5 / t])
    A = aepo(batch, AEPOAdvantage())
    assert A.dtype == torch.float64 and A.shape == (6, 3)
    np.testing.assert_allclose(A[:, 0].numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(A[:, 1].numpy(), expected, rtol=1e-12)
    assert (A[:, 2] == 0).all()
    assert batch.part_metrics == {"reinforce_rows": 1.0}
    # without the controller's extras: plain GRPO of each batch group
    plain = RolloutBatch(response_mask=mask, group_ids=batch.group_ids, rewards=batch.rewards)
    u = np.array([0.0, 0, 0, 1])
    g7 = (u - u.mean()) / (u.std(ddof=1) + 1e-6)
    np.testing.assert_allclose(aepo(plain, AEPOAdvantage())[:4, 0].numpy(), g7, rtol=1e-12)


def test_generator_temperature_reaches_the_engine():
    ex = [Example("q0", "7")]
    groups, engine = make_groups(lambda t, k, T: "7", ex)
    groups.collect([Request(0, 2)], seed=1)
    groups.collect([Request(0, 3)], seed=1, temperature=1.2)
    assert [(c[1], c[2]) for c in engine.calls] == [(2, 1.0), (3, 1.2)]
    assert groups.sampling.temperature == 1.0  # the run's setting is untouched


def test_controller_splices_positive_samples(monkeypatch):
    """4 prompts x 2 samples, controller on floor(4/4) = 1 prompt (q0) at T = 1.2 (H_prev = 0 <= 0.5).
    At T = 1 every sample answers "x" (all wrong, A = 0); at T = 1.2 q0's sample 1 is right: controller
    rewards (0, 1), A = (-0.707, +0.707), S = [row 1], k = 1. Row 0 of the batch (q0's first sample) is
    replaced by it: its group id (0) kept, flagged, guided; rows 1 (q0's second sample) keeps its
    group's rewards (0, 0). The spliced row's log-probs are recomputed at T = 1 (here -0.25 per token,
    from the stubbed pass), the engine's -0.5 stay elsewhere. Next H_prev = mean NLL over the 8 rows'
    tokens: row 0 has 1 token at 0.25, rows 1-7 one token at 0.5 -> (0.25 + 7 * 0.5) / 8 = 0.46875."""
    ex = [Example(f"q{i}", "7") for i in range(4)]

    def reply(text, k, T):
        return "7" if (T != 1.0 and "q0" in text and k == 1) else "x"

    groups, engine = make_groups(reply, ex)
    seen = {}

    def fake_logprobs(model, sub, temperature, micro, pack=True):
        seen["rows"], seen["T"] = sub.num_seqs, temperature
        return -0.25 * sub.response_mask.to(sub.rewards.dtype)

    monkeypatch.setattr("anypo.policy.batched_logprobs", fake_logprobs)
    part = AEPOController(AEPOControllerConfig(), groups)
    batch = part.collect([Request(i, 2) for i in range(4)], seed=3, step=0, group_offset=10)
    assert [c[2] for c in engine.calls] == [1.0, 1.2] and engine.calls[1][:2] == (["U:q0\nA:"], 2)
    assert batch.num_seqs == 8 and batch.group_ids.tolist() == [10, 10, 11, 11, 12, 12, 13, 13]
    assert text_of(batch, 0) == "7" and text_of(batch, 0, "prompt") == "U:q0\nA:" and batch.rewards[0] == 1.0
    assert batch.extras[AEPO_REINFORCE] == [True] + [False] * 7
    assert batch.extras["guided"][:2] == [True, False]
    assert batch.extras[AEPO_GROUP_REWARDS] == [None, (0.0, 0.0)] + [None] * 6
    assert seen == {"rows": 1, "T": 1.0}
    assert batch.old_logprobs[0, 0] == -0.25 and batch.old_logprobs[1, 0] == -0.5
    m = part.pop_metrics()
    assert m["rollout/aepo_replaced"] == 1.0 and m["rollout/aepo_temperature"] == 1.2
    assert m["rollout/aepo_positive"] == 1.0 and m["rollout/aepo_controller_samples"] == 2.0
    assert part.state_dict()["h_prev"] == pytest.approx(0.46875)
    A = aepo(batch, AEPOAdvantage())
    assert A[0, 0] == 1.0 and (A[1:, 0] == 0).all()  # the on-policy groups are all wrong

    # state round trip; above H0 the temperature is 0.8 and k halves (1 // 2 = 0: nothing replaced)
    other = AEPOController(AEPOControllerConfig(entropy_base=0.4), groups)
    other.load_state_dict(part.state_dict())
    assert other.h_prev == pytest.approx(0.46875)
    b2 = other.collect([Request(i, 2) for i in range(4)], seed=4, step=1)
    assert engine.calls[-1][2] == 0.8 and b2.extras[AEPO_REINFORCE] == [False] * 8
    assert other.pop_metrics()["rollout/aepo_replaced"] == 0.0


def test_preset_and_config_errors():
    algo = PRESETS["aepo"].build()
    assert isinstance(algo.rollout, AEPOControllerConfig) and isinstance(algo.advantage, AEPOAdvantage)
    assert algo.rollout.reinforce_sample_num == 60 and algo.rollout.entropy_base == 0.5
    assert algo.policy_loss.dual_clip == 3.0 and algo.policy_loss.eps_high == 0.2
    assert PRESETS["aepo"].build(entropy_base=0.75).rollout.entropy_base == 0.75
    with pytest.raises(ValueError, match="temperature"):
        AEPOControllerConfig(temperature_low=0.0)
    with pytest.raises(ValueError, match="controller_fraction"):
        AEPOControllerConfig(controller_fraction=1.5)
    with pytest.raises(ValueError, match="reinforce_sample_num"):
        AEPOControllerConfig(reinforce_sample_num=-1)
