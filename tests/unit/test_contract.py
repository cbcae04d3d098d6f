"""The contract of every registered part, parametrized over the registries' names: a new part is
tested by registering it. Shapes, finiteness, dtype kept (float32 and float64), zero gradient on
masked positions (whose inputs hold inf/nan garbage), namespaced finite metrics, documented configs."""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing

import pytest
import torch

from anypo.registry import get, names
from anypo.types import LossOutput, PartConfig, PolicyOutput, PreferenceBatch, RolloutBatch

DTYPES = [torch.float32, torch.float64]
N, T = 6, 5


def random_batch(dtype: torch.dtype, seed: int = 0) -> RolloutBatch:
    """Two groups of 3 (ids 40 and 2) with varied lengths, a mask hole, an empty response, and
    inf/nan garbage on every padded position of every [N, T] input."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(N, T, dtype=torch.long)
    mask[0, 3:] = 0
    mask[1, 1:] = 0
    mask[2, 2] = 0  # tool-output hole
    mask[4, :] = 0  # empty response
    pad = mask == 0

    def tok(scale: float, shift: float, garbage: float) -> torch.Tensor:
        x = torch.randn(N, T, generator=g, dtype=torch.float64) * scale + shift
        return x.masked_fill(pad, garbage).to(dtype)

    old = tok(0.3, -1.5, float("-inf"))
    return RolloutBatch(
        response_mask=mask,
        group_ids=torch.tensor([40, 40, 40, 2, 2, 2]),
        rewards=torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5, 1.0], dtype=dtype),
        old_logprobs=old,
        ref_logprobs=tok(0.3, -1.5, float("nan")),
        rollout_logprobs=old + tok(0.05, 0.0, float("nan")),
        values=tok(0.5, 0.3, float("inf")),
        returns=tok(0.5, 0.8, float("nan")),
        advantages=tok(1.0, 0.0, float("nan")),
    )


def current_logprobs(batch: RolloutBatch, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand(N, T, generator=g, dtype=torch.float64) - 0.5).to(batch.rewards.dtype)
    lp = torch.where(batch.response_mask != 0, batch.old_logprobs + noise, torch.full_like(noise, float("-inf")))
    return lp.requires_grad_(True)


def old_pass_inputs(cfg, batch: RolloutBatch) -> None:
    """Fill what a part declares it needs from the loop's old-policy pass (``needs_old_*``), with values of
    the right shape and garbage off the mask: DCPO's log-probs at other temperatures, Lp-Reg's proxy
    log-probs at every other response token (NaN elsewhere), above the current log-probs there."""
    old = batch.old_logprobs
    if getattr(cfg, "needs_old_tempered_logprobs", False):
        from anypo.advantages.dcpo import tempered_key

        for i, t in enumerate(cfg.old_logprob_temperatures(batch.part_state)):
            batch.extras[tempered_key(t)] = old * (1.0 + 0.1 * i)
    if getattr(cfg, "needs_old_prompt_logprobs", False):  # ARM: [N] mean log-prob of each row's prompt
        from anypo.advantages.arm import PROMPT_MEAN_LOGPROBS

        batch.extras[PROMPT_MEAN_LOGPROBS] = torch.linspace(-2.0, -0.5, old.shape[0], dtype=old.dtype)
    if getattr(cfg, "needs_old_teacher_logprobs", False):  # SDPO: rows 0, 3, 5 reprompted, teacher below lp
        from anypo.losses.sdpo import REPROMPTED, TEACHER_LOGPROBS

        batch.extras[REPROMPTED] = [True, False, False, True, False, True]
        batch.extras[TEACHER_LOGPROBS] = old - 0.4
    if getattr(cfg, "uses_base_samples", False):  # ORPO: the base_rollouts part's features and base rewards
        lengths = batch.response_mask.sum(1).tolist()
        g = torch.Generator().manual_seed(3)
        batch.extras["chi2_features"] = [torch.randn(int(n), 4, generator=g) for n in lengths]
        batch.extras["chi2_base_features"] = [torch.randn(2, 4, generator=g) - 0.5 for _ in lengths]
        batch.extras["chi2_base_rewards"] = [float(i % 2) for i in range(len(lengths))]
    if getattr(cfg, "needs_old_proxy_logprobs", False):
        from anypo.regularizers.lp_reg import PROXY_LOGPROBS

        pick = (batch.response_mask != 0) & (torch.arange(old.shape[1]) % 2 == 0)
        batch.extras[PROXY_LOGPROBS] = torch.where(pick, old + 0.6, torch.full_like(old, float("nan")))


def check_metrics(metrics: dict) -> None:
    for k, v in metrics.items():
        assert isinstance(k, str) and "/" in k, f"metric {k!r} is not namespaced"
        assert isinstance(v, float) and math.isfinite(v), f"metric {k} = {v!r}"


def check_grad(x: torch.Tensor, mask: torch.Tensor) -> None:
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert (x.grad[mask == 0] == 0).all()


@pytest.mark.parametrize(
    "kind", ["advantage", "policy_loss", "value_loss", "regularizer", "preference_loss", "sampler"]
)
def test_every_kind_has_parts_with_documented_frozen_configs(kind):
    assert names(kind), f"no {kind} registered"
    for name in names(kind):
        fn, Cfg = get(kind, name)
        assert issubclass(Cfg, PartConfig) and dataclasses.is_dataclass(Cfg)
        assert Cfg.__dataclass_params__.frozen, f"{Cfg.__name__} must be frozen"
        assert (Cfg.__doc__ or "").strip() and (fn.__doc__ or "").strip()
        if kind != "sampler":
            assert "http" in Cfg.__doc__, f"{Cfg.__name__} docstring must cite the paper's URL"
        cfg = Cfg()
        for need in ("ref_logprobs", "values", "entropy", "logits"):
            assert isinstance(getattr(cfg, f"needs_{need}"), bool)
        for need in ("rollout_logprobs", "greedy_rewards"):
            assert isinstance(getattr(cfg, f"needs_{need}"), bool)
        assert isinstance(cfg.stateful, bool) and isinstance(cfg.init_state(), dict)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", names("advantage"))
def test_advantage_contract(name, dtype):
    fn, Cfg = get("advantage", name)
    batch = random_batch(dtype)
    batch.advantages = batch.returns = None
    if Cfg().needs_greedy_rewards:  # ReMax: one greedy reward per group; group 2's failed (NaN)
        batch.greedy_rewards = torch.tensor([0.5, 0.5, 0.5, float("nan"), float("nan"), float("nan")], dtype=dtype)
    old_pass_inputs(Cfg(), batch)
    A = fn(batch, Cfg())
    assert A.shape == (N, T) and A.dtype == dtype
    assert torch.isfinite(A).all()
    assert (A[batch.response_mask == 0] == 0).all()
    check_metrics({f"advantage/{k}": v for k, v in (batch.part_metrics or {}).items()})  # add_metric: finite floats
    if Cfg().needs_values:
        assert batch.returns is not None and batch.returns.shape == (N, T) and torch.isfinite(batch.returns).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", names("policy_loss"))
def test_policy_loss_contract(name, dtype):
    fn, Cfg = get("policy_loss", name)
    batch = random_batch(dtype)
    lp = current_logprobs(batch)
    for cfg in (Cfg(), *([Cfg(tis="sequence")] if "tis" in {f.name for f in dataclasses.fields(Cfg)} else [])):
        lp.grad = None
        old_pass_inputs(cfg, batch)
        if cfg.needs_minibatch_prepare:  # Clip-Cov / KL-Cov: the loop's once-per-mini-batch token selection
            cfg.prepare_minibatch(batch, lp.detach(), seed=0)
        out = fn(PolicyOutput(logprobs=lp), batch, cfg)
        assert out.loss.dim() == 0 and out.loss.dtype == dtype and torch.isfinite(out.loss)
        out.loss.backward()
        check_grad(lp, batch.response_mask)
        assert lp.grad.abs().sum() > 0
        check_metrics(out.metrics)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", names("regularizer"))
def test_regularizer_contract(name, dtype):
    fn, Cfg = get("regularizer", name)
    batch = random_batch(dtype)
    lp = current_logprobs(batch)
    ent = (torch.rand(N, T, dtype=dtype) * 2).masked_fill(batch.response_mask == 0, float("nan")).requires_grad_(True)
    old_pass_inputs(Cfg(), batch)
    out = fn(PolicyOutput(logprobs=lp, entropy=ent), batch, Cfg())
    assert out.loss.dim() == 0 and out.loss.dtype == dtype and torch.isfinite(out.loss)
    out.loss.backward()
    for x in (lp, ent):
        if x.grad is not None:
            check_grad(x, batch.response_mask)
    assert lp.grad is not None or ent.grad is not None
    check_metrics(out.metrics)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", names("value_loss"))
def test_value_loss_contract(name, dtype):
    fn, Cfg = get("value_loss", name)
    batch = random_batch(dtype)
    v = (batch.values.detach() + 0.7).masked_fill(batch.response_mask == 0, float("-inf")).requires_grad_(True)
    out = fn(v, batch, Cfg())
    assert out.loss.dim() == 0 and out.loss.dtype == dtype and torch.isfinite(out.loss)
    out.loss.backward()
    check_grad(v, batch.response_mask)
    check_metrics(out.metrics)


def random_pairs(dtype: torch.dtype, seed: int = 0) -> tuple[PreferenceBatch, torch.Tensor, torch.Tensor]:
    """N pairs, chosen padded to T and rejected to T + 2, with a mask hole, an empty chosen and an
    empty rejected response, and inf/nan garbage on every padded position."""
    g = torch.Generator().manual_seed(seed)
    mc = torch.ones(N, T, dtype=torch.long)
    mc[0, 3:] = 0
    mc[2, 2] = 0  # hole
    mc[4, :] = 0  # empty chosen response
    mr = torch.ones(N, T + 2, dtype=torch.bool)
    mr[1, 2:] = False
    mr[3, :] = False  # empty rejected response

    def tok(mask: torch.Tensor, garbage: float) -> torch.Tensor:
        x = torch.randn(*mask.shape, generator=g, dtype=torch.float64) * 0.3 - 1.5
        return x.masked_fill(mask == 0, garbage).to(dtype)

    batch = PreferenceBatch(
        chosen_mask=mc,
        rejected_mask=mr,
        ref_chosen_logprobs=tok(mc, float("nan")),
        ref_rejected_logprobs=tok(mr, float("inf")),
    )
    return batch, tok(mc, float("-inf")).requires_grad_(True), tok(mr, float("-inf")).requires_grad_(True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", names("preference_loss"))
def test_preference_loss_contract(name, dtype):
    """``fn(out_chosen, out_rejected, batch, cfg) -> LossOutput``; a part that does not need the
    reference log-probs also runs without them."""
    fn, Cfg = get("preference_loss", name)
    assert list(inspect.signature(fn).parameters) == ["out_chosen", "out_rejected", "batch", "cfg"]
    assert typing.get_type_hints(fn)["return"] is LossOutput
    cfg = Cfg()
    batch, lp_c, lp_r = random_pairs(dtype)
    if not cfg.needs_ref_logprobs:
        batch.ref_chosen_logprobs = batch.ref_rejected_logprobs = None
    for key in getattr(cfg, "needs_pair_extras", ()):  # per-pair oracle values of the online losses (sppo, xpo)
        batch.extras[key] = torch.rand(batch.chosen_mask.shape[0], dtype=dtype)
    if getattr(cfg, "needs_revision_logprobs", False):  # srpo: log-probs after the revision prompts
        from anypo.losses.revision import SIDES, revision_key

        for target in SIDES:
            like = lp_c if target == "chosen" else lp_r
            for given in SIDES:
                batch.extras[revision_key(target, given)] = like.detach() * 0.9
                batch.extras[revision_key(target, given, ref=True)] = like.detach() * 1.1
    out = fn(PolicyOutput(logprobs=lp_c), PolicyOutput(logprobs=lp_r), batch, cfg)
    assert isinstance(out, LossOutput)
    assert out.loss.dim() == 0 and out.loss.dtype == dtype and torch.isfinite(out.loss)
    out.loss.backward()
    check_grad(lp_c, batch.chosen_mask)
    assert lp_c.grad.abs().sum() > 0
    if lp_r.grad is not None:
        check_grad(lp_r, batch.rejected_mask)
    check_metrics(out.metrics)
    assert "pref/loss" in out.metrics and out.reduction("pref/loss") == "sum"


@pytest.mark.parametrize("name", names("sampler"))
def test_sampler_contract(name):
    Cls, Cfg = get("sampler", name)
    cfg = Cfg()
    assert isinstance(cfg.max_draws, int) and cfg.max_draws >= 1
    s = Cls(cfg, 9, 2, 0)
    idx = s.next_prompts(0)
    assert len(idx) == 2 and all(isinstance(i, int) and 0 <= i < 9 for i in idx)
    sizes = s.group_sizes(idx, 3)
    assert len(sizes) == len(idx) and all(isinstance(n, int) and n >= 1 for n in sizes)
    batch = random_batch(torch.float32)
    batch.extras["prompt_index"] = [idx[0]] * 3 + [idx[1]] * 3  # the rollout's per-row prompt (two groups of 3)
    again, n = s.rescore_prompts(1)
    assert all(0 <= i < 9 for i in again) and (n >= 1 or not again)
    if again:
        rescored = random_batch(torch.float32)
        rescored.extras["prompt_index"] = [again[0]] * 3 + [again[-1]] * 3
        rescored.response_ids = torch.randint(0, 50, (N, T), generator=torch.Generator().manual_seed(0))
        s.rescore(rescored)
    s.observe(batch)
    keep = s.keep(batch)
    assert keep.dtype == torch.bool and keep.shape == (N,)
    assert all(isinstance(v, float) for v in s.pop_metrics().values())
    state = s.state_dict()
    s2 = Cls(cfg, 9, 2, 0)
    s2.load_state_dict(state)
    assert s2.next_prompts(1) == s.next_prompts(1)
