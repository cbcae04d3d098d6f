"""The loop's critic with several value heads (``anypo.policy.CriticConfig``), as SAFE's double soft-min
critic (github.com/ryyzn9/SAFE ``notebooks/mainD.py``, ``DoubleCritic``).

Expected values: the spec's soft-min example (``shared/papers/rlvr-losses.md`` section 18, an
independent numpy computation) and plain ``math`` re-computations of the formula in the docstrings;
gradients by float64 finite differences (``torch.autograd.gradcheck``) and by the hand-derived softmax
weights of the soft-min.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from anypo.policy import Critic, CriticConfig, combine_heads
from anypo.types import RolloutBatch

SAFE = CriticConfig(heads=2, combine="soft_min", alpha=0.3, head="layernorm_mlp", state="after")


def soft_min_by_hand(vs: list[float], alpha: float) -> float:
    """-alpha * (log(sum_k exp(-v_k / alpha)) - log K), term by term."""
    return -alpha * (math.log(sum(math.exp(-v / alpha) for v in vs)) - math.log(len(vs)))


def test_soft_min_of_two_values_by_hand():
    """v1 = (0.2, 1.0), v2 = (0.5, 0.9), alpha 0.3. First pair: exp(-0.2/0.3) = 0.513417,
    exp(-0.5/0.3) = 0.188876, half their sum 0.351147, log -1.04655, times -0.3: 0.31397; the spec
    prints 0.313966 and 0.945852 (its numpy run), which ``soft_min_by_hand`` reproduces to 1e-6. Between
    min (0.2, 0.9) and mean (0.35, 0.95). Equal heads give their value (the log K term); three heads
    (0, 1, 2) at alpha 1: 1 + 0.367879 + 0.135335 = 1.503215, log 0.407606, minus log 3 = 1.098612:
    -(0.407606 - 1.098612) = 0.691006."""
    v = torch.tensor([[0.2, 0.5], [1.0, 0.9]], dtype=torch.float64)  # [2 tokens, K = 2 heads]
    got = combine_heads(v, "soft_min", 0.3)
    assert got.tolist() == pytest.approx([0.313966, 0.945852], abs=1e-6)
    assert got.tolist() == pytest.approx([soft_min_by_hand([0.2, 0.5], 0.3), soft_min_by_hand([1.0, 0.9], 0.3)])
    assert combine_heads(v, "min", 0.3).tolist() == [0.2, 0.9]
    assert combine_heads(v, "mean", 0.3).tolist() == pytest.approx([0.35, 0.95])
    assert combine_heads(torch.tensor([[0.7, 0.7]]), "soft_min", 0.3).item() == pytest.approx(0.7)
    three = combine_heads(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), "soft_min", 1.0).item()
    assert three == pytest.approx(-(math.log(1 + math.exp(-1) + math.exp(-2)) - math.log(3)))
    assert three == pytest.approx(0.691006, abs=1e-6)


def test_soft_min_gradient_reaches_both_heads():
    """dV/dv_k = exp(-v_k / alpha) / sum_j exp(-v_j / alpha) (the softmax of -v / alpha): for
    (0.2, 0.5) at alpha 0.3 the weights are 0.513417 / 0.702293 = 0.731056 and 0.268944, so both heads
    get gradient and the lower one more. float64 gradcheck of the soft-min, and of SAFE's value loss on
    the soft-min of two heads (the value loss trains both heads through it)."""
    from anypo.losses.critic import SAFEValueLoss, safe_value

    v = torch.tensor([0.2, 0.5], dtype=torch.float64, requires_grad=True)
    combine_heads(v, "soft_min", 0.3).backward()
    w1 = math.exp(-0.2 / 0.3) / (math.exp(-0.2 / 0.3) + math.exp(-0.5 / 0.3))
    assert v.grad.tolist() == pytest.approx([w1, 1 - w1]) and w1 == pytest.approx(0.731059, abs=1e-5)
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: combine_heads(t, "soft_min", 0.3), (x,))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float64)
    batch = RolloutBatch(
        response_mask=mask,
        group_ids=torch.zeros(3, dtype=torch.long),
        rewards=torch.zeros(3, dtype=torch.float64),
        values=torch.full((3, 4), 0.1, dtype=torch.float64) * mask,
        returns=torch.tensor([0.5, -0.3, 1.2], dtype=torch.float64)[:, None] * mask,
    )
    v1 = (0.05 * torch.arange(12, dtype=torch.float64).reshape(3, 4)).requires_grad_(True)
    v2 = (0.3 - 0.04 * torch.arange(12, dtype=torch.float64).reshape(3, 4)).requires_grad_(True)

    def loss(a, b):
        return safe_value(combine_heads(torch.stack([a, b], -1), "soft_min", 0.3) * mask, batch, SAFEValueLoss()).loss

    assert torch.autograd.gradcheck(loss, (v1, v2))
    loss(v1, v2).backward()
    assert v1.grad.abs().sum() > 0 and v2.grad.abs().sum() > 0


def _batch() -> RolloutBatch:
    """Two rows: prompts [5, 6, 7] and [pad, 8, 9]; responses [10, 11, 12] and [13, 14] (padded)."""
    return RolloutBatch(
        response_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]),
        group_ids=torch.tensor([0, 1]),
        rewards=torch.zeros(2),
        prompt_ids=torch.tensor([[5, 6, 7], [0, 8, 9]]),
        prompt_mask=torch.tensor([[1, 1, 1], [0, 1, 1]]),
        response_ids=torch.tensor([[10, 11, 12], [13, 14, 0]]),
    )


def test_double_critic_heads_combination_and_states(tiny_model):
    """SAFE's critic on the tiny model: one shared LayerNorm and two Linear(h, h/4) -> GELU ->
    Linear(h/4, 1) heads; V is the soft-min (alpha 0.3) of the two heads' values, token by token (by
    hand from ``head_values``). ``state="after"`` values the hidden state at the token itself, so its
    column t equals ``state="before"``'s column t + 1 (same weights). Heads are seeded: the same seed
    gives the same heads, the two heads differ, and the global random stream is not consumed. The
    default critic keeps its one zero linear head ("head.*")."""
    b = _batch()
    rng = torch.get_rng_state()
    c = Critic(tiny_model, SAFE, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    h = tiny_model.config.hidden_size
    names = {k: tuple(v.shape) for k, v in c.state_dict().items() if not k.startswith("trunk.")}
    assert names == {
        "norm.weight": (h,), "norm.bias": (h,),
        **{f"heads.{k}.0.weight": (h // 4, h) for k in (0, 1)}, **{f"heads.{k}.0.bias": (h // 4,) for k in (0, 1)},
        **{f"heads.{k}.2.weight": (1, h // 4) for k in (0, 1)}, **{f"heads.{k}.2.bias": (1,) for k in (0, 1)},
    }  # fmt: skip
    assert not torch.equal(c.heads[0][0].weight, c.heads[1][0].weight)
    assert torch.equal(Critic(tiny_model, SAFE, seed=3).heads[1][2].weight, c.heads[1][2].weight)
    with torch.no_grad():
        hv = c.head_values(b)  # [2, 3, 2]
        v = c(b)
    assert hv.shape == (2, 3, 2) and v.shape == (2, 3)
    for i, j in [(0, 0), (0, 2), (1, 0), (1, 1)]:
        assert v[i, j].item() == pytest.approx(soft_min_by_hand(hv[i, j].tolist(), 0.3), abs=1e-6)
    assert v[1, 2].item() == 0.0  # padding
    before = Critic(tiny_model, CriticConfig(heads=2, combine="soft_min", head="layernorm_mlp", state="before"))
    before.load_state_dict(c.state_dict())
    with torch.no_grad():
        vb = before(b)
    assert torch.allclose(v[0, :2], vb[0, 1:], atol=1e-5) and torch.allclose(v[1, :1], vb[1, 1:2], atol=1e-5)
    plain = Critic(tiny_model)
    assert {k for k in plain.state_dict() if not k.startswith("trunk.")} == {"head.weight", "head.bias"}
    assert plain(b).abs().sum() == 0


def test_double_critic_checkpoint_round_trip(tmp_path, tiny_model):
    """Both heads (and the LayerNorm) go through ``anypo.checkpoint`` as the loop saves the critic
    (``trainable_state``) and load strictly into a critic built with another seed, which then gives
    the same values."""
    from anypo import checkpoint

    c = Critic(tiny_model, SAFE, seed=1)
    checkpoint.save(tmp_path, 1, {"critic": checkpoint.trainable_state(c)}, {})
    tensors, _ = checkpoint.load(checkpoint.latest(tmp_path))
    assert {"heads.0.2.weight", "heads.1.2.weight", "norm.weight"} <= set(tensors["critic"])
    other = Critic(tiny_model, SAFE, seed=2)
    b = _batch()
    with torch.no_grad():
        assert not torch.allclose(other(b), c(b))
        other.load_state_dict(tensors["critic"], strict=True)
        assert torch.equal(other(b), c(b))


@pytest.mark.parametrize(
    "kw, field",
    [({"heads": 0}, "heads"), ({"combine": "max"}, "combine"), ({"alpha": 0.0}, "alpha"),
     ({"head": "mlp"}, "head"), ({"state": "mid"}, "state")],
)  # fmt: skip
def test_bad_critic_config(kw, field):
    with pytest.raises(ValueError, match=f"CriticConfig.{field}"):
        CriticConfig(**kw)


def test_safe_preset_builds_the_double_critic():
    """The safe preset asks for SAFE's critic; other presets keep the one-head default; the config
    survives the JSON round trip of a saved run config."""
    from anypo.algorithms import PRESETS
    from anypo.config import from_jsonable
    from anypo.runs import to_jsonable

    algo = PRESETS["safe"].build()
    assert algo.critic == SAFE
    assert PRESETS["ppo"].build().critic == CriticConfig()
    assert from_jsonable(to_jsonable(algo)).critic == SAFE


def test_end_value_is_the_state_after_the_last_token(tiny_model):
    """``values_and_end`` gives, next to the [N, T] values, V(s_l): the value of the hidden state at
    each row's last response token. A critic valuing the state after each token holds the same number
    in its last column (row 0: column 2; row 1, two tokens: column 1), so a "before" critic's end value
    equals an "after" critic's last-column value with the same weights (one linear head and SAFE's two
    heads alike); its [N, T] values are the plain forward's. An empty response's end value is 0."""
    b = _batch()
    for cfg in (CriticConfig(), SAFE):
        after = Critic(tiny_model, dataclasses.replace(cfg, state="after"), seed=5)
        if cfg.heads == 1:  # give the zero head some weights
            torch.nn.init.normal_(after.head.weight, std=0.1, generator=torch.Generator().manual_seed(0))
        before = Critic(tiny_model, dataclasses.replace(cfg, state="before"), seed=0)
        before.load_state_dict(after.state_dict())
        with torch.no_grad():
            va = after(b)
            values, end = before.values_and_end(b, micro=1)
            assert torch.allclose(values, before(b), atol=1e-6)
        assert torch.allclose(end, torch.stack([va[0, 2], va[1, 1]]), atol=1e-5) and end.abs().sum() > 0
    empty = RolloutBatch(**{**_batch().__dict__, "response_mask": torch.tensor([[1, 1, 1], [0, 0, 0]])})
    with torch.no_grad():
        assert before.values_and_end(empty, micro=2)[1][1].item() == 0.0


def test_loop_fills_the_bootstrap_values_for_egae():
    """EGAE declares needs_bootstrap_values, which the online loop lists as provided (the config check
    accepts the tppo preset); the loop then fills extras["bootstrap_values"] from the critic's pass."""
    from anypo.algorithms import PRESETS
    from anypo.train import PROVIDED_NEEDS

    algo = PRESETS["tppo"].build()
    assert algo.needs("bootstrap_values") and "bootstrap_values" in PROVIDED_NEEDS
    assert not PRESETS["ppo"].build().needs("bootstrap_values")
