"""The reward model (anypo.train_rm): the Bradley-Terry loss by hand, the scalar head against unpadded
forwards, micro-batch invariance of the loop's gradients, and the exported model as an oracle."""

from __future__ import annotations

import math

import pytest
import torch

from anypo.models import ModelConfig, load_model
from anypo.oracles import OracleConfig, make_oracle
from anypo.oracles.verifier_bt import bt_prob
from anypo.tasks.base import Example
from anypo.tasks.preference_data import PreferenceDataConfig
from anypo.train_rm import RewardModel, RMLoop, RMTrainConfig, bt_loss, rm_config_problems, sequences


def test_bt_loss_by_hand():
    """r_w = (1, 0), r_l = (0, 0), P = 2: (-log sigmoid(1) - log sigmoid(0)) / 2 = (0.313262 + 0.693147) / 2
    = 0.503204; centring 0.1: + 0.1 ((1 + 0)^2 + 0^2) / 2 = 0.05 -> 0.553204. With P = 4 (a micro-batch of
    a 4-pair step) the same pairs contribute half."""
    r_w, r_l = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    assert bt_loss(r_w, r_l, 2.0).item() == pytest.approx((math.log1p(math.exp(-1)) + math.log(2)) / 2, abs=1e-6)
    assert bt_loss(r_w, r_l, 2.0, 0.1).item() == pytest.approx(0.503204 + 0.05, abs=1e-5)
    assert bt_loss(r_w, r_l, 4.0).item() == pytest.approx(0.503204 / 2, abs=1e-5)


def test_reward_is_the_head_on_the_last_real_token():
    """Right-padded rows give the same rewards as each sequence alone (no padding): the head reads the
    final hidden state at the last real token, and padding after it changes nothing."""
    rm = RewardModel(load_model("tiny", seed=0), seed=0).eval()
    rows = [[5, 6, 7, 8, 9], [5, 6, 7], [10, 11, 12, 13]]
    ids = torch.zeros(3, 5, dtype=torch.long)
    mask = torch.zeros(3, 5, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    with torch.no_grad():
        batch = rm(ids, mask)
        alone = [rm(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)).item() for r in rows]
        h = rm.body()(input_ids=torch.tensor([rows[1]])).last_hidden_state[0, -1]
    assert batch.tolist() == pytest.approx(alone, abs=1e-5)
    assert alone[1] == pytest.approx(float(rm.head.weight[0].detach() @ h), abs=1e-5)


def cfg(tmp_path, **kw) -> RMTrainConfig:
    base = RMTrainConfig(
        model=ModelConfig(name="tiny"), data=PreferenceDataConfig(num_train=16, num_heldout=4),
        steps=2, pairs_per_step=4, micro_batch_size=4, eval_every=0, progress=False, out_dir=str(tmp_path),
    )  # fmt: skip
    import dataclasses

    return dataclasses.replace(base, **kw)


def _loop(c, tmp_path) -> RMLoop:
    torch.manual_seed(c.seed)
    return RMLoop.build(c, tmp_path)


@pytest.mark.parametrize("micro", [1, 3])
def test_loop_loss_and_gradients_do_not_depend_on_the_micro_batch(tmp_path, micro):
    """The same 4 pairs: micro-batches of 4, 3 + 1 or 1 x 4 give the same loss and gradients, and the loss
    equals bt_loss of the rewards of one independent forward of the 8 sequences."""
    ref = _loop(cfg(tmp_path / "a"), tmp_path / "a")
    out_ref, _ = ref.accumulate(ref.train_pairs, [0, 1, 2, 3])
    with torch.no_grad():
        ids, mask = sequences(ref.train_pairs, [0, 1, 2, 3], ref.pad_id)
        r = ref.model(ids, mask)
    assert out_ref["pref/loss"] == pytest.approx(bt_loss(r[:4], r[4:], 4.0).item(), abs=1e-5)
    assert out_ref["pref/accuracy"] == pytest.approx(float((r[:4] > r[4:]).float().mean()))
    other = _loop(cfg(tmp_path / "b", micro_batch_size=micro), tmp_path / "b")
    out, _ = other.accumulate(other.train_pairs, [0, 1, 2, 3])
    assert out["pref/loss"] == pytest.approx(out_ref["pref/loss"], abs=1e-5)
    for (n, p), (_, q) in zip(ref.model.named_parameters(), other.model.named_parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), n


def test_exported_model_is_an_oracle(tmp_path):
    """export() writes the backbone and the head; RewardModelOracle scores (x, y) with the training
    tokenisation: the same reward as the loop's model on that pair, and P = sigmoid((r - r2) / T)."""
    loop = _loop(cfg(tmp_path), tmp_path)
    loop.export(tmp_path / "final")
    oracle = make_oracle(OracleConfig(kind="reward_model", reward_model=str(tmp_path / "final"), temperature=0.5), None)
    pair = loop.data.train[0]
    ex = Example(pair.prompt[-1]["content"], "0")
    with torch.no_grad():
        ids, mask = sequences(loop.train_pairs, [0], loop.pad_id)
        r = loop.model.eval()(ids, mask)
    g = oracle.gold([ex, ex], [pair.chosen, pair.rejected])
    assert g.tolist() == pytest.approx(r.tolist(), abs=1e-5)
    assert oracle.prob([ex], [pair.chosen], [pair.rejected]).item() == pytest.approx(
        bt_prob(float(g[0]), float(g[1]), 0.5), abs=1e-9
    )


def test_config_problems(tmp_path):
    from anypo.oracles import oracle_config_problems

    assert rm_config_problems(cfg(tmp_path)) == []
    import dataclasses

    from anypo.train_rm import RMAlgoConfig

    bad = dataclasses.replace(cfg(tmp_path), lr=0.0, algo=RMAlgoConfig(center_rewards_coef=-1.0))
    probs = rm_config_problems(bad)
    assert len(probs) == 2 and "--lr" in probs[0] and "--algo.center-rewards-coef" in probs[1]
    assert "--oracle.reward-model" in oracle_config_problems(OracleConfig(kind="reward_model"))[0]
    with pytest.raises(FileNotFoundError, match="reward_head"):
        make_oracle(OracleConfig(kind="reward_model", reward_model=str(tmp_path)), None)
