"""Policy and value losses: the spec's worked examples (rlvr-losses.md 2.1-2.5, 7, 12), hand
derivations, finite-difference gradient checks, TIS, and the exact external snippet."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anypo.registry import get, names
from anypo.types import PolicyOutput, RolloutBatch

# Shared toy batch of the spec (section 1).
MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=np.float64)
R = np.array([1.0, 0.0, 1.0, 0.0])
LP_OLD = np.array([[-1.0, -0.5, -2.0, 0], [-0.7, -1.2, 0, 0], [-0.3, -0.9, -1.5, -0.4], [-2.2, 0, 0, 0]])
LP = LP_OLD + np.array([[0.1, -0.05, 0.3, 0], [-0.25, 0.02, 0, 0], [0.05, 0.4, -0.1, 0.0], [-0.5, 0, 0, 0]])
LP_REF = LP_OLD + np.array([[-0.2, 0.1, 0.0, 0], [0.3, -0.1, 0, 0], [0.0, 0.2, -0.3, 0.1], [0.4, 0, 0, 0]])
A_GRPO = (R - R.mean()) / (R.std(ddof=1) + 1e-6)  # spec: [0.866024 -0.866024 ...]
A_DR = R - R.mean()


def toy(adv_seq: np.ndarray = A_GRPO, dtype=torch.float64) -> tuple[RolloutBatch, torch.Tensor]:
    batch = RolloutBatch(
        response_mask=torch.tensor(MASK),
        group_ids=torch.zeros(4, dtype=torch.long),
        rewards=torch.tensor(R, dtype=dtype),
        old_logprobs=torch.tensor(LP_OLD, dtype=dtype),
        ref_logprobs=torch.tensor(LP_REF, dtype=dtype),
        advantages=torch.tensor(adv_seq[:, None] * MASK, dtype=dtype),
    )
    return batch, torch.tensor(LP, dtype=dtype, requires_grad=True)


def run(kind: str, name: str, batch: RolloutBatch, lp: torch.Tensor, **cfg):
    fn, Cfg = get(kind, name)
    out = fn(PolicyOutput(logprobs=lp), batch, Cfg(**cfg))
    (grad,) = torch.autograd.grad(out.loss, lp)
    return out, grad.numpy()


def test_grpo_loss_spec_example():
    """Spec 2.1: ppo_clip (eps 0.2) + 0.04 * k3 KL, both seq-mean-token-mean, on the toy batch:
    loss -0.0827505 and the finite-difference gradient printed by the spec snippet."""
    batch, lp = toy()
    fn, Cfg = get("policy_loss", "ppo_clip")
    kl_fn, KL = get("regularizer", "kl")
    pg = fn(PolicyOutput(logprobs=lp), batch, Cfg(eps_low=0.2, eps_high=0.2, aggregation="seq_mean_token_mean"))
    kl = kl_fn(PolicyOutput(logprobs=lp), batch, KL(coef=0.04, estimator="k3", aggregation="seq_mean_token_mean"))
    loss = pg.loss + kl.loss
    assert loss.item() == pytest.approx(-0.0827505, rel=1e-5)
    (grad,) = torch.autograd.grad(loss, lp)
    expected = [
        [-0.0788948, -0.0691884, 0.000863939, 0],
        [-0.00366627, 0.111005, 0, 0],
        [-0.0567797, 0.000453173, -0.0485225, -0.0543894],
        [-0.014596, 0, 0, 0],
    ]
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-5, atol=1e-9)


def test_dr_grpo_loss_spec_example():
    """Spec 2.1 (Dr. GRPO lines): A = R - mean, sum / (G * L_max) with L_max = 4, no KL:
    loss -0.14976 and its gradient."""
    batch, lp = toy(A_DR)
    out, grad = run("policy_loss", "ppo_clip", batch, lp, aggregation="seq_mean_token_sum_norm", norm_length=4)
    assert out.loss.item() == pytest.approx(-0.14976, rel=1e-5)
    expected = [
        [-0.0345366, -0.0297259, 0, 0],
        [0, 0.0318813, 0, 0],
        [-0.0328522, 0, -0.0282762, -0.03125],
        [0, 0, 0, 0],
    ]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-9)
    # norm_length None falls back to the padded length T = 4: same loss
    out2, _ = run("policy_loss", "ppo_clip", batch, lp, aggregation="seq_mean_token_sum_norm")
    assert out2.loss.item() == pytest.approx(out.loss.item())


def test_dapo_loss_spec_example():
    """Spec 2.3: clip-higher 0.2 / 0.28, token-mean over all 10 tokens: loss -0.428882."""
    batch, lp = toy()
    out, _ = run("policy_loss", "ppo_clip", batch, lp, eps_low=0.2, eps_high=0.28, aggregation="token_mean")
    assert out.loss.item() == pytest.approx(-0.428882, rel=1e-5)


def test_ppo_clipfrac_and_ratio_metrics_numpy():
    """clipfrac = share of valid tokens where the clipped term is the max; ratio stats over the mask."""
    batch, lp = toy()
    out, _ = run("policy_loss", "ppo_clip", batch, lp, eps_low=0.2, eps_high=0.2)
    r = np.exp(LP - LP_OLD)
    a = A_GRPO[:, None]
    clipped = (-a * np.clip(r, 0.8, 1.2)) > (-a * r)
    on = MASK == 1
    assert out.metrics["policy/clipfrac"] == pytest.approx(clipped[on].mean())
    assert out.metrics["policy/ratio_max"] == pytest.approx(r[on].max())
    assert out.metrics["policy/ratio_min"] == pytest.approx(r[on].min())
    assert out.metrics["policy/approx_kl"] == pytest.approx((r - 1 - np.log(r))[on].mean())
    assert out.metrics["policy/loss"] == pytest.approx(out.loss.item())


def test_dual_clip_by_hand():
    """One token, A = -1, r = 5: max(-A r, -A clip(r, .8, 1.2)) = max(5, 1.2) = 5 with gradient
    dL/dlp = -A r = 5; dual clip c = 3 bounds it to min(5, -c A) = 3 with gradient 0."""
    batch = RolloutBatch(
        torch.ones(1, 1), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.float64),
        old_logprobs=torch.zeros(1, 1, dtype=torch.float64), advantages=-torch.ones(1, 1, dtype=torch.float64),
    )  # fmt: skip
    lp = torch.full((1, 1), math.log(5.0), dtype=torch.float64, requires_grad=True)
    out, grad = run("policy_loss", "ppo_clip", batch, lp)
    assert out.loss.item() == pytest.approx(5.0) and grad[0, 0] == pytest.approx(5.0)
    out, grad = run("policy_loss", "ppo_clip", batch, lp, dual_clip=3.0)
    assert out.loss.item() == pytest.approx(3.0) and grad[0, 0] == 0.0
    assert out.metrics["policy/dual_clipfrac"] == 1.0
    with pytest.raises(ValueError, match="dual_clip"):
        get("policy_loss", "ppo_clip")[1](dual_clip=0.5)


GSPO_GRAD_02 = [
    [-0.0810992, -0.0810992, -0.0810992, 0],
    [0.096493, 0.096493, 0, 0],
    [-0.0590759, -0.0590759, -0.0590759, -0.0590759],
    [0, 0, 0, 0],
]


def test_gspo_spec_example():
    """Spec 2.4: s_i = [1.12374 0.891366 1.09144 0.606531]; with eps 3e-4/4e-4 every s_i is outside
    the band: loss -0.000303108 and zero gradient; with eps 0.2: loss -0.11341 and its gradient."""
    batch, lp = toy()
    out, grad = run("policy_loss", "gspo", batch, lp)
    assert out.loss.item() == pytest.approx(-0.000303108, rel=1e-5)
    np.testing.assert_allclose(grad, 0.0, atol=1e-12)
    assert out.metrics["policy/clipfrac"] == 1.0
    assert out.metrics["policy/seq_ratio_max"] == pytest.approx(1.12374, rel=1e-5)
    assert out.metrics["policy/seq_ratio_min"] == pytest.approx(0.606531, rel=1e-5)
    out, grad = run("policy_loss", "gspo", batch, lp, eps_low=0.2, eps_high=0.2)
    assert out.loss.item() == pytest.approx(-0.11341, rel=1e-5)
    np.testing.assert_allclose(grad, GSPO_GRAD_02, rtol=1e-5, atol=1e-9)


def test_gspo_token_equals_gspo_for_sequence_advantages():
    """GSPO-token: value sg[s_i] and per-token gradient; with constant advantages per sequence it
    matches GSPO in value and gradient (the paper's remark), here on the spec numbers."""
    batch, lp = toy()
    out, grad = run("policy_loss", "gspo", batch, lp, eps_low=0.2, eps_high=0.2, level="token")
    assert out.loss.item() == pytest.approx(-0.11341, rel=1e-5)
    np.testing.assert_allclose(grad, GSPO_GRAD_02, rtol=1e-5, atol=1e-9)


def test_luspo_spec_example():
    """Spec 2.4 (LUSPO lines, section 12): each GSPO sequence term times |o_i| = [3, 2, 4, 1],
    normaliser 1/G (reconstructed): loss -1.11593 and its gradient."""
    batch, lp = toy()
    out, grad = run("policy_loss", "luspo", batch, lp, eps_low=0.2, eps_high=0.2)
    assert out.loss.item() == pytest.approx(-1.11593, rel=1e-5)
    expected = [
        [-0.243297, -0.243297, -0.243297, 0],
        [0.192986, 0.192986, 0, 0],
        [-0.236304, -0.236304, -0.236304, -0.236304],
        [0, 0, 0, 0],
    ]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-9)


def test_luspo_token_mean_is_length_weighted_mean():
    """With aggregation token_mean, Z = sum|o_i| = 10: loss = sum_i |o_i| L_i / 10 = -1.11593 * 4 / 10."""
    batch, lp = toy()
    out, _ = run("policy_loss", "luspo", batch, lp, eps_low=0.2, eps_high=0.2, aggregation="token_mean")
    assert out.loss.item() == pytest.approx(-1.11593 * 4 / 10, rel=1e-5)


def test_cispo_spec_example():
    """Spec 2.5: w = sg(clip(r, 0, 1.28)), loss = -sum(w A lp m)/10 = 0.247948, dL/dlp = -w A m / 10."""
    batch, lp = toy()
    out, grad = run("policy_loss", "cispo", batch, lp, eps_low=1.0, eps_high=0.28)
    assert out.loss.item() == pytest.approx(0.247948, rel=1e-5)
    expected = [
        [-0.0957104, -0.0823787, -0.110851, 0],
        [0.067446, 0.0883519, 0, 0],
        [-0.0910426, -0.110851, -0.0783611, -0.0866024],
        [0.052527, 0, 0, 0],
    ]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-9)
    # two tokens have r > 1.28 (e^0.3 and e^0.4): clipfrac 2/10
    assert out.metrics["policy/clipfrac"] == pytest.approx(0.2)


def test_cispo_mask_clip():
    """mask_clip drops tokens with A > 0 and r > 1.28: (0, 2) and (2, 1); the others keep -w A / 10."""
    batch, lp = toy()
    _, grad = run("policy_loss", "cispo", batch, lp, mask_clip=True)
    r = np.exp(LP - LP_OLD)
    w = np.clip(r, 0.0, 1.28)
    drop = (A_GRPO[:, None] > 0) & (r > 1.28)
    expected = np.where(drop, 0.0, -w * A_GRPO[:, None] * MASK / 10)
    np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-12)
    assert drop.sum() == 2


def test_sapo_spec_example():
    """Spec 7: gate f(r) = sigmoid(tau (r - 1)) 4 / tau, tau = 1.0 (A > 0) or 1.05; loss -0.199671;
    gradient -A 4 p (1 - p) r / (G |o_i|)."""
    batch, lp = toy()
    out, grad = run("policy_loss", "sapo", batch, lp, tau_pos=1.0, tau_neg=1.05)
    assert out.loss.item() == pytest.approx(-0.199671, rel=1e-5)
    expected = [
        [-0.0795386, -0.0686081, -0.0944963, 0],
        [0.0831807, 0.110427, 0, 0],
        [-0.0568642, -0.0760545, -0.048865, -0.0541265],
        [0.12587, 0, 0, 0],
    ]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-9)


def test_sapo_on_policy_is_vanilla_policy_gradient():
    """At r = 1 the gate's gradient weight 4 p (1 - p) r = 4 * 0.25 = 1: dL/dlp = -A m / (G |o_i|)."""
    batch, _ = toy()
    lp = torch.tensor(LP_OLD, requires_grad=True)
    out, grad = run("policy_loss", "sapo", batch, lp)
    expected = -A_GRPO[:, None] * MASK / MASK.sum(1, keepdims=True) / 4
    np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-12)
    assert out.metrics["policy/gate_weight"] == pytest.approx(1.0)


def test_sapo_gate_damping_by_hand():
    """One token, A = +1 (tau_pos = 1), log-ratio 0.5: r = e^0.5 = 1.64872, p = sigmoid(0.64872) =
    1 / (1 + e^-0.64872) = 1 / 1.52271 = 0.656722, damping 4 p (1 - p) = 4 x 0.656722 x 0.343278 =
    0.901753, gate weight 4 p (1 - p) r = 0.901753 x 1.648721 = 1.486739. A second token at r = 1
    (damping 1) shows the minimum is taken over tokens and the mean over both: 0.950876."""
    b = RolloutBatch(
        response_mask=torch.ones(1, 2, dtype=torch.float64),
        group_ids=torch.zeros(1, dtype=torch.long),
        rewards=torch.zeros(1, dtype=torch.float64),
        old_logprobs=torch.tensor([[-1.0, -1.0]], dtype=torch.float64),
        advantages=torch.ones(1, 2, dtype=torch.float64),
    )
    fn, Cfg = get("policy_loss", "sapo")
    out = fn(PolicyOutput(logprobs=torch.tensor([[-0.5, -1.0]], dtype=torch.float64)), b, Cfg())
    assert out.metrics["policy/gate_damping_min"] == pytest.approx(0.901753, abs=2e-6)
    assert out.metrics["policy/gate_damping"] == pytest.approx(0.950876, abs=2e-6)
    assert out.metrics["policy/gate_weight"] == pytest.approx((1.486739 + 1.0) / 2, abs=2e-6)


def test_reinforce_by_hand():
    """L = -(1/N) sum_i A_i sum_t lp_it (seq_mean_token_sum); dL/dlp = -A m / N."""
    batch, lp = toy()
    out, grad = run("policy_loss", "reinforce", batch, lp)
    assert out.loss.item() == pytest.approx(-(A_GRPO * (LP * MASK).sum(1)).sum() / 4)
    np.testing.assert_allclose(grad, -A_GRPO[:, None] * MASK / 4, rtol=1e-12)
    batch.old_logprobs = None  # not needed: no ratio
    run("policy_loss", "reinforce", batch, lp)


def _tis_batch(old_minus_rollout: list[float]) -> tuple[RolloutBatch, torch.Tensor]:
    """Two tokens of one sequence, on-policy (lp = old), A = 1: each token's PPO loss is -A = -1."""
    old = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    batch = RolloutBatch(
        torch.ones(1, 2), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.float64),
        old_logprobs=old, advantages=torch.ones(1, 2, dtype=torch.float64),
        rollout_logprobs=old - torch.tensor([old_minus_rollout], dtype=torch.float64),
    )  # fmt: skip
    return batch, old.clone().requires_grad_(True)


@pytest.mark.parametrize(
    ("tis", "mode", "cap", "expected"),
    [
        ("token", "truncate", 2.0, -(2.0 + 0.5) / 2),  # w = [3 -> 2, 0.5]
        ("token", "mask", 2.0, -(0.0 + 0.5) / 2),  # w = [3 dropped, 0.5]
        ("sequence", "truncate", 2.0, -(1.5 + 1.5) / 2),  # w = 3 * 0.5 = 1.5 under the cap
        ("sequence", "truncate", 1.2, -(1.2 + 1.2) / 2),  # 1.5 truncated to 1.2
        ("sequence", "mask", 1.2, 0.0),  # the whole sequence dropped
    ],
)
def test_tis_weights_by_hand(tis, mode, cap, expected):
    """old - rollout = [log 3, log 0.5]: token weights 3 and 0.5, sequence weight 1.5; token-mean."""
    batch, lp = _tis_batch([math.log(3.0), math.log(0.5)])
    fn, Cfg = get("policy_loss", "ppo_clip")
    out = fn(PolicyOutput(logprobs=lp), batch, Cfg(tis=tis, tis_mode=mode, tis_cap=cap))
    assert out.loss.item() == pytest.approx(expected)
    assert "tis/weight_mean" in out.metrics and "tis/capped_frac" in out.metrics


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "luspo", "cispo", "sapo"])
def test_tis_requires_rollout_logprobs(name):
    batch, lp = toy()
    fn, Cfg = get("policy_loss", name)
    with pytest.raises(ValueError, match="rollout_logprobs"):
        fn(PolicyOutput(logprobs=lp), batch, Cfg(tis="token"))
    with pytest.raises(ValueError, match="tis"):
        Cfg(tis="tokens")


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "luspo", "cispo", "sapo"])
def test_missing_old_logprobs_is_a_clear_error(name):
    batch, lp = toy()
    batch.old_logprobs = None
    fn, Cfg = get("policy_loss", name)
    with pytest.raises(ValueError, match="old_logprobs"):
        fn(PolicyOutput(logprobs=lp), batch, Cfg())


def test_bad_aggregation_is_rejected():
    with pytest.raises(ValueError, match="aggregation"):
        get("policy_loss", "ppo_clip")[1](aggregation="token-mean")


# Policy losses whose value is -A sg[w(r)] lp (a stop-gradient weight of the ratio to the anchor):
# finite differences of the value see w move, autograd by design does not (the gradchecks below).
STOP_GRADIENT_WEIGHT = {"cispo", "dppo"}


@pytest.mark.parametrize("name", names("policy_loss"))
@pytest.mark.parametrize("spread", [0.1, 0.6])
def test_gradcheck_every_policy_loss(name, spread):
    """torch.autograd.gradcheck (float64 central differences) on random inputs, inside (spread 0.1)
    and partly outside (0.6) the clip ranges, with the default config of each loss.

    The losses of STOP_GRADIENT_WEIGHT multiply lp by a stop-gradient weight of the ratio (CISPO:
    sg[clip(r)]; DPPO: sg[min(r, C)] on the tokens of its trust region), so their gradient is that of
    the surrogate with the weight frozen at the current point: moving the anchor log-probs
    (old_logprobs, and rollout_logprobs when set) together with lp keeps r (hence the weight)
    constant in the finite differences while autograd sees only the lp term. DPPO's trust-region
    mask is piecewise constant in (lp, anchor) and flips only at a threshold, which an eps = 1e-6
    step from these random points does not reach.
    """
    g = torch.Generator().manual_seed(int(spread * 10))
    N, T = 5, 6
    mask = torch.ones(N, T)
    mask[1, 4:] = 0
    mask[3, 1:] = 0
    mask[2, 2] = 0  # a hole
    old = -torch.rand(N, T, generator=g, dtype=torch.float64) * 2
    batch = RolloutBatch(
        mask, torch.tensor([0, 0, 1, 1, 1]), torch.zeros(N, dtype=torch.float64),
        old_logprobs=old, advantages=torch.randn(N, T, generator=g, dtype=torch.float64) * mask,
    )  # fmt: skip
    lp = (old + (torch.rand(N, T, generator=g, dtype=torch.float64) * 2 - 1) * spread).requires_grad_(True)
    fn, Cfg = get("policy_loss", name)
    cfg = Cfg(eps_low=0.2, eps_high=0.2) if name in ("gspo", "luspo") else Cfg()
    lp0 = lp.detach().clone()
    if getattr(cfg, "needs_old_teacher_logprobs", False):  # SDPO: rows 0, 2, 3 reprompted
        batch.extras |= {"sdpo_reprompted": [True, False, True, True, False], "sdpo_teacher_logprobs": old - 0.3}
    teacher0 = batch.extras.get("sdpo_teacher_logprobs")
    if cfg.needs_minibatch_prepare:  # Clip-Cov / KL-Cov: the token selection is fixed at lp0, as the loop does
        cfg.prepare_minibatch(batch, lp0, seed=0)  # once per mini-batch, without gradient

    def loss(x: torch.Tensor) -> torch.Tensor:
        if name in STOP_GRADIENT_WEIGHT:
            batch.old_logprobs = old + (x - lp0)  # the anchor (no rollout_logprobs here) moves with lp
        if teacher0 is not None:  # SDPO's token form sg(lp - lt) lp: lt moves with lp, holding the weight
            batch.extras["sdpo_teacher_logprobs"] = teacher0 + (x - lp0)
        return fn(PolicyOutput(logprobs=x), batch, cfg).loss

    assert torch.autograd.gradcheck(loss, (lp,), eps=1e-6, atol=1e-7)


def test_clipped_value_loss_by_hand():
    """Token 0: V = 1, V_old = 0, R = 2, c = 0.5: clip(V) = 0.5; max((1-2)^2, (0.5-2)^2) = 2.25,
    0.5 * 2.25 = 1.125, gradient 0 (the clipped branch is flat in V).
    Token 1: V = 0.2, V_old = 0, R = 1: inside the clip range, 0.5 * 0.64 = 0.32, dL/dV = V - R = -0.8.
    token-mean over 2 tokens: loss (1.125 + 0.32) / 2 = 0.7225, gradients [0, -0.4]."""
    fn, Cfg = get("value_loss", "clipped")
    assert Cfg().needs_values
    batch = RolloutBatch(
        torch.ones(1, 2), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.float64),
        values=torch.zeros(1, 2, dtype=torch.float64), returns=torch.tensor([[2.0, 1.0]], dtype=torch.float64),
    )  # fmt: skip
    v = torch.tensor([[1.0, 0.2]], dtype=torch.float64, requires_grad=True)
    out = fn(v, batch, Cfg(cliprange=0.5))
    assert out.loss.item() == pytest.approx(0.7225)
    (grad,) = torch.autograd.grad(out.loss, v)
    np.testing.assert_allclose(grad.numpy(), [[0.0, -0.4]], atol=1e-12)
    assert out.metrics["value/clipfrac"] == pytest.approx(0.5)
    batch.returns = None
    with pytest.raises(ValueError, match="returns"):
        fn(v, batch, Cfg())


def _external_snippet(mask, gid, R, lp_old, lp_ref, lp):  # noqa: N803 - the snippet's names
    """The check run outside the project, verbatim (its inputs are this function's arguments)."""
    import torch  # noqa: F401

    from anypo.registry import get
    from anypo.types import PolicyOutput, RolloutBatch

    batch = RolloutBatch(response_mask=mask, group_ids=gid, rewards=R, old_logprobs=lp_old, ref_logprobs=lp_ref)
    adv_fn, AdvCfg = get("advantage", "grpo")
    batch.advantages = adv_fn(batch, AdvCfg())  # [N, T]
    loss_fn, LossCfg = get("policy_loss", "ppo_clip")
    out = loss_fn(PolicyOutput(logprobs=lp), batch, LossCfg(eps_low=0.2, eps_high=0.28, aggregation="token_mean"))
    out.loss.backward()
    out.metrics  # noqa: B018 - lp requires grad
    return out


@pytest.mark.parametrize("mask_kind", ["float", "bool", "int"])
def test_exact_external_snippet(mask_kind):
    """The external snippet with float, bool and int masks on the spec's toy batch: the loss is
    spec 2.3's DAPO number (-0.428882), the gradient is finite and 0 on padding."""
    m = torch.tensor(MASK)
    mask = {"float": m.float(), "bool": m.bool(), "int": m.long()}[mask_kind]
    lp = torch.tensor(LP, dtype=torch.float32, requires_grad=True)
    out = _external_snippet(
        mask,
        torch.zeros(4, dtype=torch.long),
        torch.tensor(R, dtype=torch.float32),
        torch.tensor(LP_OLD, dtype=torch.float32),
        torch.tensor(LP_REF, dtype=torch.float32),
        lp,
    )
    assert out.loss.item() == pytest.approx(-0.428882, rel=1e-4)
    assert out.loss.dtype == torch.float32
    assert lp.grad is not None and torch.isfinite(lp.grad).all()
    assert (lp.grad[m == 0] == 0).all()
    assert out.metrics and all("/" in k for k in out.metrics)
