"""SRPO in the offline preference loop on the tiny model: the loop supplies the revision-conditioned
log-probs a loss declares (``needs_revision_logprobs``), checked against independent unpacked forwards
and a hand computation of the loss; the revision reference columns are cached and read back; the loss
is micro-batch invariant; the online loop refuses it up front."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from anypo.errors import UserError
from anypo.losses.revision import revision_key
from anypo.losses.srpo import SRPO
from anypo.models import load_model
from anypo.tasks.preference_data import PreferenceDataConfig
from anypo.train_pref import PrefAlgoConfig, PrefLoop, PrefTrainConfig
from tiny_runs import tiny_run

TEMPLATE = "Question: {prompt}\nDraft: {response}\nImprove the draft."


def cfg_of(tmp_path, **kw) -> PrefTrainConfig:
    base = {
        "data": PreferenceDataConfig(num_train=8, num_heldout=4),
        "pairs_per_step": 4,
        "micro_batch_size": 4,
        "algo": PrefAlgoConfig(loss=SRPO(beta=0.1, alpha=0.7, revision_template=TEMPLATE)),
    }
    return tiny_run(PrefTrainConfig, tmp_path, **{**base, **kw})


def build(cfg: PrefTrainConfig, run_dir: Path) -> PrefLoop:
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    return PrefLoop.build(cfg, run_dir)


def perturb(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * p.abs().mean().clamp(min=1e-3))


@torch.no_grad()
def seq_logprob(model: torch.nn.Module, prompt: list[int], response: list[int]) -> torch.Tensor:
    """Per-token log-probs of ``response`` after ``prompt``: one unpadded, unpacked forward of the
    concatenation in float64 (independent of anypo.policy's packing)."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0].double()
    pred = logits[len(prompt) - 1 : -1]
    return torch.log_softmax(pred, -1).gather(1, torch.tensor(response)[:, None])[:, 0]


def revision_prompt_ids(tokenizer, pair, response: str) -> list[int]:
    """R(x, y) built by hand: the pair's single user message put into TEMPLATE, then the chat template."""
    (user,) = [m for m in pair.prompt if m["role"] == "user"]
    msgs = [dict(m) for m in pair.prompt]
    msgs[-1] = {"role": "user", "content": f"Question: {user['content']}\nDraft: {response}\nImprove the draft."}
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_loss_on_three_pairs_equals_a_hand_computation(tmp_path):
    """Per pair, six sequence log-probs of the perturbed policy and six of the initial model (the
    reference), each from an independent forward: after the plain prompt and after the hand-built
    revision prompts R(x, y_w), R(x, y_l); then, with beta 0.1 and alpha 0.7,
    m_l = beta (g(w|l) - g(l|l)), m_w = beta (g(w|w) - g(l|w)), z = beta (h_w - h_l + g(w|l) - g(l|w)),
    l = alpha ((m_l - 1/2)^2 + (m_w - 1/2)^2) + (1 - alpha)(z - 1)^2, L the mean over the 3 pairs.
    The cached revision reference column equals the initial model's log-probs token by token."""
    beta, alpha = 0.1, 0.7
    cfg = cfg_of(tmp_path, micro_batch_size=2)
    loop = build(cfg, tmp_path / "run")
    tp, tok = loop.train_pairs, loop.tokenizer
    ref_model = load_model(cfg.model, seed=cfg.seed).eval()
    idx = [0, 3, 6]
    for i in idx:  # the reference columns, against the fresh initial model
        for given in ("chosen", "rejected"):
            prompt = revision_prompt_ids(tok, tp.texts[i], getattr(tp.texts[i], given))
            assert tp.revision_prompt[given][i] == prompt
            for target in ("chosen", "rejected"):
                got = tp.ref_revision[revision_key(target, given, ref=True)][i].double()
                assert torch.allclose(got, seq_logprob(ref_model, prompt, getattr(tp, target)[i]), atol=1e-5, rtol=0)
    perturb(loop.model)

    def ratio(prompt: list[int], response: list[int]) -> float:
        pol, ref = seq_logprob(loop.model, prompt, response), seq_logprob(ref_model, prompt, response)
        return float(pol.sum() - ref.sum())

    losses, si, gen, ml = [], [], [], []
    for i in idx:
        pair = tp.texts[i]
        h_w, h_l = ratio(tp.prompt[i], tp.chosen[i]), ratio(tp.prompt[i], tp.rejected[i])
        g = {}
        for given in ("chosen", "rejected"):
            prompt = revision_prompt_ids(tok, pair, getattr(pair, given))
            g[("w", given)] = ratio(prompt, tp.chosen[i])
            g[("l", given)] = ratio(prompt, tp.rejected[i])
        m_l = beta * (g[("w", "rejected")] - g[("l", "rejected")])
        m_w = beta * (g[("w", "chosen")] - g[("l", "chosen")])
        z = beta * (h_w - h_l + g[("w", "rejected")] - g[("l", "chosen")])
        si.append((m_l - 0.5) ** 2 + (m_w - 0.5) ** 2)
        gen.append((z - 1) ** 2)
        losses.append(alpha * si[-1] + (1 - alpha) * gen[-1])
        ml.append(m_l)
    loop.model.zero_grad(set_to_none=True)
    m, _ = loop.accumulate(tp, idx)
    assert m["pref/loss"] == pytest.approx(sum(losses) / 3, abs=1e-5)
    assert m["pref/loss_self_improvement"] == pytest.approx(sum(si) / 3, abs=1e-5)
    assert m["pref/loss_generative"] == pytest.approx(sum(gen) / 3, abs=1e-5)
    assert m["pref/revision_margin_given_rejected"] == pytest.approx(sum(ml) / 3, abs=1e-5)
    assert abs(m["pref/loss"] - (alpha * 0.5 + (1 - alpha))) > 1e-3  # the perturbation moved the loss
    assert all(math.isfinite(p.grad.abs().sum()) for p in loop.model.parameters() if p.grad is not None)


def test_revision_reference_is_read_back_and_microbatches_do_not_change_the_step(tmp_path, monkeypatch):
    """A second build of the same run directory reads the six reference columns back bit for bit
    (no reference pass); one step's loss, metrics and gradient are the same for micro-batches of 4
    and 1 pair (within float32 rounding)."""
    cfg = cfg_of(tmp_path)
    loop = build(cfg, tmp_path / "run")
    cols = {k: list(v) for k, v in loop.train_pairs.reference_columns().items()}
    assert len(cols) == 6 and all(c is not None for col in cols.values() for c in col)

    def no_pass(*a, **k):
        raise AssertionError("the reference pass ran again")

    monkeypatch.setattr(PrefLoop, "_reference_pass", no_pass)
    again = build(cfg, tmp_path / "run")
    for k, col in again.train_pairs.reference_columns().items():
        assert all(torch.equal(a, b) for a, b in zip(col, cols[k], strict=True)), k
    monkeypatch.undo()

    got = {}
    for micro in (4, 1):
        loop = build(cfg_of(tmp_path, micro_batch_size=micro), tmp_path / f"m{micro}")
        perturb(loop.model)
        loop.model.zero_grad(set_to_none=True)
        metrics, _ = loop.accumulate(loop.train_pairs, [0, 1, 2, 3])
        grads = torch.cat([p.grad.flatten() for p in loop.model.parameters() if p.grad is not None])
        got[micro] = (metrics, grads)
    (m4, g4), (m1, g1) = got[4], got[1]
    for k in m4:
        if not k.startswith("time/"):
            assert m1[k] == pytest.approx(m4[k], rel=1e-5, abs=1e-5), k
    assert (g1 - g4).abs().max() <= 1e-5 * max(1.0, float(g4.abs().max()))


def test_online_loop_refuses_a_loss_that_needs_revision_logprobs(tmp_path):
    from anypo.train_pref_online import OnlinePrefAlgoConfig, OnlinePrefTrainConfig, check_online_pref_config

    cfg = OnlinePrefTrainConfig(algo=OnlinePrefAlgoConfig(loss=SRPO()), out_dir=str(tmp_path))
    with pytest.raises(UserError, match="needs_revision_logprobs.*offline"):
        check_online_pref_config(cfg)
