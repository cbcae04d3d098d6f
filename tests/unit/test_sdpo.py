"""SDPO (anypo.losses.sdpo, anypo.rollout.reprompt, old_pass.teacher_pass): the spec's worked example
(exploration-curricula.md section 18, computed there with numpy), hand-derived token-level values and
gradients, float64 gradchecks, the micro-batch contract, the reprompt construction, and the teacher
pass against plain forwards of the tiny model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from anypo.algorithms import PRESETS
from anypo.losses.sdpo import (
    DISTILL_TOKENS,
    REPROMPTED,
    SDPO,
    TEACHER_LOGPROBS,
    TEACHER_PROMPT,
    TEACHER_TOPK_LOGPROBS,
    TOPK_IDS,
    distill_divergence,
    ema_update,
    sdpo,
    topk_with_tail,
)
from anypo.rollout.groups import left_pad
from anypo.rollout.old_pass import OldPassRequest, behaviour_pass, old_pass_request, swapped_weights, teacher_pass
from anypo.rollout.reprompt import SDPOReprompt, SDPORepromptConfig, reprompt_text, successful_sibling
from anypo.types import PolicyOutput, RolloutBatch

ZS = [[1.0, 0.0, -1.0, 0.5], [0.3, 0.2, 2.0, -1.0]]  # student logits (spec section 18)
ZT = [[2.0, 0.0, -1.0, 0.0], [0.0, 0.0, 3.0, -1.0]]  # teacher logits


def _lsm(z):
    return torch.log_softmax(torch.tensor(z, dtype=torch.float64), -1)


def test_spec_divergences():
    """Spec: alpha 0 (KL(t||s)) [0.174657, 0.095709]; alpha 1 (KL(s||t)) [0.201165, 0.124]; alpha 0.5
    (generalised JSD, mixture 0.5 / 0.5) [0.045748, 0.026537]."""
    s, t = _lsm(ZS), _lsm(ZT)
    np.testing.assert_allclose(distill_divergence(s, t, 0.0).numpy(), [0.174657, 0.095709], atol=1e-6)
    np.testing.assert_allclose(distill_divergence(s, t, 1.0).numpy(), [0.201165, 0.124000], atol=1e-6)
    np.testing.assert_allclose(distill_divergence(s, t, 0.5).numpy(), [0.045748, 0.026537], atol=1e-6)


def test_spec_topk_with_tail():
    """Spec: the student's top-2 ids are [[0, 3], [2, 0]]; reverse KL over the 2 + tail buckets
    [0.201165, 0.123433]. Renormalised without the tail: row 0 has s = lsm([1, .5]), t = lsm([2, 0])
    over ids 0, 3: KL(s||t) = sum p_s (s - t) by hand below."""
    s, t = _lsm(ZS), _lsm(ZT)
    idx = s.topk(2, -1).indices
    assert idx.tolist() == [[0, 3], [2, 0]]
    st, tt = s.gather(-1, idx), t.gather(-1, idx)
    got = distill_divergence(topk_with_tail(st, True), topk_with_tail(tt, True), 1.0)
    np.testing.assert_allclose(got.numpy(), [0.201165, 0.123433], atol=1e-6)
    ps = np.exp([1.0, 0.5]) / np.exp([1.0, 0.5]).sum()
    pt = np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum()
    want = float((ps * (np.log(ps) - np.log(pt))).sum())
    got = distill_divergence(topk_with_tail(st, False), topk_with_tail(tt, False), 1.0)
    assert float(got[0]) == pytest.approx(want, abs=1e-12)


def _batch(N=2, T=1, reprompted=(True, True)):
    return RolloutBatch(
        response_mask=torch.ones(N, T, dtype=torch.long),
        group_ids=torch.zeros(N, dtype=torch.long),
        rewards=torch.zeros(N, dtype=torch.float64),
        old_logprobs=torch.zeros(N, T, dtype=torch.float64),
        extras={REPROMPTED: list(reprompted)},
    )


def test_spec_loss_with_is_weights():
    """Spec: IS weights min(exp(clamp(lp - old)), 2) with lp = [-0.5, -0.3], old = [-1.5, -0.2]:
    [min(e, 2), e^-0.1] = [2.0, 0.904837]; token mean of the reverse KL times the weights =
    (0.201165 * 2 + 0.124 * 0.904837) / 2 = 0.257265. Here the top-4 of V = 4 renormalised (no tail)
    is the whole vocabulary."""
    b = _batch(2, 1)
    b.old_logprobs = torch.tensor([[-1.5], [-0.2]], dtype=torch.float64)
    s, t = _lsm(ZS), _lsm(ZT)
    ids = s.topk(4, -1).indices
    b.extras |= {TOPK_IDS: ids[:, None], TEACHER_TOPK_LOGPROBS: t.gather(-1, ids)[:, None]}
    b.extras[TEACHER_LOGPROBS] = torch.zeros(2, 1, dtype=torch.float64)
    cfg = SDPO(topk=4, add_tail=False, alpha=1.0, is_clip=2.0)
    cfg.prepare_minibatch(b, None, 0)
    lp = torch.tensor([[-0.5], [-0.3]], dtype=torch.float64)
    out = sdpo(PolicyOutput(logprobs=lp, logits=torch.tensor(ZS, dtype=torch.float64)[:, None]), b, cfg)
    assert float(out.loss) == pytest.approx(0.257265, abs=1e-6)
    assert out.metrics["sdpo/is_weight_mean"] == pytest.approx((2.0 + math.exp(-0.1)) / 2, abs=1e-12)


def test_support_entropies_by_hand():
    """The spec's two rows over the whole vocabulary (top-4 of V = 4, renormalised: the full
    distributions), computed with numpy: H = -sum p log p of softmax(ZS) and softmax(ZT) per row, the
    metrics their means over the 2 distilled tokens. The teacher's rows are sharper here (a 2 and a 3
    logit), so its entropy is the lower one."""
    b = _batch(2, 1)
    s, t = _lsm(ZS), _lsm(ZT)
    ids = s.topk(4, -1).indices
    b.extras |= {TOPK_IDS: ids[:, None], TEACHER_TOPK_LOGPROBS: t.gather(-1, ids)[:, None]}
    b.extras[TEACHER_LOGPROBS] = torch.zeros(2, 1, dtype=torch.float64)
    cfg = SDPO(topk=4, add_tail=False, alpha=0.5)
    cfg.prepare_minibatch(b, None, 0)
    lp = torch.tensor([[-0.5], [-0.3]], dtype=torch.float64)
    out = sdpo(PolicyOutput(logprobs=lp, logits=torch.tensor(ZS, dtype=torch.float64)[:, None]), b, cfg)

    def entropy(z):
        p = np.exp(z) / np.exp(z).sum()
        return float(-(p * np.log(p)).sum())

    want_s = (entropy(np.array(ZS[0])) + entropy(np.array(ZS[1]))) / 2
    want_t = (entropy(np.array(ZT[0])) + entropy(np.array(ZT[1]))) / 2
    assert out.metrics["sdpo/student_support_entropy"] == pytest.approx(want_s, abs=1e-12)
    assert out.metrics["sdpo/teacher_support_entropy"] == pytest.approx(want_t, abs=1e-12)
    assert want_t < want_s
    # the token-level form has no support: no such metric
    tok = sdpo(PolicyOutput(logprobs=lp), b, SDPO())
    assert "sdpo/teacher_support_entropy" not in tok.metrics


def test_token_level_by_hand():
    """Token level (topk 0, alpha 1): loss_t = sg(lp - lt) lp, mean over distilled tokens. Rows: 0
    reprompted (lp [-1, -2], lt [-0.5, -3]), 1 not (excluded), 2 reprompted with one token (lp -0.2,
    lt -0.2). D = 3 tokens: loss = ((-0.5)(-1) + (1)(-2) + 0) / 3 = -0.5; dL/dlp = (lp - lt) / 3 =
    [-0.5/3, 1/3], 0 on row 1, 0 on row 2; teacher gap mean(lt - lp) = (0.5 - 1 + 0) / 3."""
    b = _batch(3, 2, (True, False, True))
    b.response_mask[2, 1] = 0
    b.extras[TEACHER_LOGPROBS] = torch.tensor([[-0.5, -3.0], [9.0, 9.0], [-0.2, 7.0]], dtype=torch.float64)
    cfg = SDPO()
    cfg.prepare_minibatch(b, None, 0)
    assert b.extras[DISTILL_TOKENS] == 3.0
    lp = torch.tensor([[-1.0, -2.0], [-1.0, -1.0], [-0.2, float("-inf")]], dtype=torch.float64, requires_grad=True)
    out = sdpo(PolicyOutput(logprobs=lp), b, cfg)
    assert float(out.loss.detach()) == pytest.approx(-0.5)
    out.loss.backward()
    np.testing.assert_allclose(lp.grad.numpy(), [[-0.5 / 3, 1 / 3], [0, 0], [0, 0]], atol=1e-12)
    assert out.metrics["sdpo/teacher_gap"] == pytest.approx(-0.5 / 3)
    assert out.metrics["sdpo/distilled_frac"] == pytest.approx(3 / 5)


def _topk_inputs(seed=0, N=4, T=3, V=6, K=3):
    g = torch.Generator().manual_seed(seed)
    b = _batch(N, T, (True, True, False, True))
    b.response_mask[1, 2:] = 0
    b.old_logprobs = -torch.rand(N, T, generator=g, dtype=torch.float64)
    logits = torch.randn(N, T, V, generator=g, dtype=torch.float64)
    ids = logits.topk(K, -1).indices
    teacher = torch.log_softmax(torch.randn(N, T, V, generator=g, dtype=torch.float64), -1)
    b.extras |= {TOPK_IDS: ids, TEACHER_TOPK_LOGPROBS: teacher.gather(-1, ids), TEACHER_LOGPROBS: teacher[..., 0]}
    lp = torch.log_softmax(logits, -1)[..., 0] + 0.1 * torch.randn(N, T, generator=g, dtype=torch.float64)
    return b, logits.requires_grad_(True), lp.requires_grad_(True)


@pytest.mark.parametrize(("alpha", "tail"), [(0.0, True), (0.5, True), (1.0, False), (0.3, False)])
def test_gradcheck_topk(alpha, tail):
    """float64 central differences of the top-K loss in the student's logits (the IS weight is a
    stop-gradient of lp, which gradcheck holds fixed)."""
    b, logits, lp = _topk_inputs()
    cfg = SDPO(topk=3, add_tail=tail, alpha=alpha, is_clip=1.5)
    cfg.prepare_minibatch(b, None, 0)
    assert torch.autograd.gradcheck(
        lambda z: sdpo(PolicyOutput(logprobs=lp.detach(), logits=z), b, cfg).loss, (logits,), eps=1e-6, atol=1e-7
    )


def test_gradcheck_token_level():
    b, _, lp = _topk_inputs(1)
    cfg = SDPO()
    cfg.prepare_minibatch(b, None, 0)
    # the weight sg(lp - lt) moves with lp in finite differences: move lt with it to hold it fixed
    lt0, lp0 = b.extras[TEACHER_LOGPROBS].clone(), lp.detach().clone()

    def f(x):
        b.extras[TEACHER_LOGPROBS] = lt0 + (x - lp0)
        return sdpo(PolicyOutput(logprobs=x), b, cfg).loss

    assert torch.autograd.gradcheck(f, (lp,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("split", [[[0, 1], [2, 3]], [[3], [0, 2], [1]]])
def test_microbatch_sum(split):
    """Micro-batches with the mini-batch's scale and distilled count: losses and gradients sum to the whole's."""
    b, logits, lp = _topk_inputs(2)
    cfg = SDPO(topk=3, alpha=0.5, is_clip=2.0)
    cfg.prepare_minibatch(b, None, 0)
    whole = sdpo(PolicyOutput(logprobs=lp, logits=logits), b, cfg).loss
    g_whole = torch.autograd.grad(whole, logits)[0]
    total = 0
    for idx in split:
        i = torch.tensor(idx)
        micro = b.select(i, loss_scale=b.scale())
        total = total + sdpo(PolicyOutput(logprobs=lp[i], logits=logits[i]), micro, cfg).loss
    g_micro = torch.autograd.grad(total, logits)[0]
    torch.testing.assert_close(total, whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_micro, g_whole, rtol=1e-12, atol=1e-12)


def test_missing_inputs_and_bad_config():
    b = _batch()
    with pytest.raises(ValueError, match="sdpo_distill_tokens"):
        sdpo(PolicyOutput(logprobs=torch.zeros(2, 1, dtype=torch.float64)), b, SDPO())
    SDPO().prepare_minibatch(b, None, 0)
    with pytest.raises(ValueError, match="sdpo_teacher_logprobs"):
        sdpo(PolicyOutput(logprobs=torch.zeros(2, 1, dtype=torch.float64)), b, SDPO())
    with pytest.raises(ValueError, match="sdpo_reprompt"):
        SDPO().prepare_minibatch(RolloutBatch(torch.ones(1, 1), torch.zeros(1), torch.zeros(1)), None, 0)
    with pytest.raises(ValueError, match="alpha"):
        SDPO(alpha=0.5)
    with pytest.raises(ValueError, match="teacher"):
        SDPO(teacher="copy")
    with pytest.raises(ValueError, match="topk"):
        SDPO(topk=-1)
    with pytest.raises(ValueError, match="is_clip"):
        SDPO(is_clip=0.0)
    with pytest.raises(ValueError, match="solution_template"):
        SDPORepromptConfig(solution_template="no placeholder")


def test_ema_update_and_teacher_state():
    """Spec: teacher 1.0, student 2.0, rate 0.05: 0.95 * 1 + 0.05 * 2 = 1.05. sync_teacher copies the
    weights at the first call, applies the EMA only when an optimizer step is pending (update_state),
    and never for the trust-region teacher."""
    t = {"w": torch.tensor([1.0])}
    ema_update(t, {"w": torch.tensor([2.0])}, 0.05)
    assert float(t["w"]) == pytest.approx(1.05)
    model = torch.nn.Linear(1, 1, bias=False)
    cfg, state = SDPO(teacher_update_rate=0.5), SDPO().init_state()
    with torch.no_grad():
        model.weight.fill_(1.0)
    cfg.sync_teacher(state, model)
    with torch.no_grad():
        model.weight.fill_(3.0)
    cfg.sync_teacher(state, model)  # nothing pending: unchanged
    assert float(state["teacher"]["weight"]) == 1.0
    cfg.update_state(state, {})
    cfg.sync_teacher(state, model)
    assert float(state["teacher"]["weight"]) == 2.0 and state["ema_updates"] == 1 and not state["pending"]
    tr, st = SDPO(teacher="trust_region", teacher_update_rate=0.5), SDPO().init_state()
    tr.sync_teacher(st, model)
    with torch.no_grad():
        model.weight.fill_(5.0)
    tr.update_state(st, {})
    tr.sync_teacher(st, model)
    assert float(st["teacher"]["weight"]) == 3.0


def test_successful_sibling_and_reprompt_text():
    """Group ids [0, 0, 0, 1, 1], rewards [0, 1, 1, 0, 0.5], threshold 1: rows 0-2 get row 1 (row 1
    itself gets row 2 when not_self); rows 3-4 none. The templates of the official code."""
    r, g = [0.0, 1.0, 1.0, 0.0, 0.5], [0, 0, 0, 1, 1]
    assert [successful_sibling(i, r, g, 1.0, False) for i in range(5)] == [1, 1, 1, None, None]
    assert [successful_sibling(i, r, g, 1.0, True) for i in range(5)] == [1, 2, 1, None, None]
    cfg = SDPORepromptConfig(remove_thinking=True)
    assert reprompt_text(cfg, "Q?", None, None) is None
    want = "Q?\nCorrect solution:\n\nA: 3\n\n\n\nCorrectly solve the original question.\n"
    assert reprompt_text(cfg, "Q?", "<think>hmm</think> A: 3", None) == want
    want = (
        "Q?\nThe following is feedback from your unsuccessful earlier attempt:\n\nwrong sign\n\n"
        "\n\nCorrectly solve the original question.\n"
    )
    assert reprompt_text(cfg, "Q?", None, "wrong sign") == want


def test_reprompt_part_annotates_rows():
    """A stub generator (chat template = 'U:' + user message, tokens = characters): group 0 has a
    success (row 1), group 1 none but row 3 has feedback. dont_reprompt_on_self_success: row 1 gets
    no other success -> not reprompted; rows 0, 2 get row 1's text; with include_feedback row 3 gets
    its feedback, row 4 (no feedback) stays on its original prompt."""
    from anypo.tasks import Example

    class Tok:  # chat template 'U:' + the user message; one token per character
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "U:" + messages[-1]["content"]

        def __call__(self, text, add_special_tokens):
            return {"input_ids": [ord(c) for c in text]}

    tokenizer = Tok()
    examples = [Example(prompt="P0", answer="1"), Example(prompt="P1", answer="2")]
    groups = SimpleNamespace(examples=examples, tokenizer=tokenizer, prompt_ids=[[1, 2], [3]])
    part = SDPOReprompt(SDPORepromptConfig(dont_reprompt_on_self_success=True, include_feedback=True), groups)
    b = RolloutBatch(
        response_mask=torch.ones(5, 1),
        group_ids=torch.tensor([0, 0, 0, 1, 1]),
        rewards=torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0]),
        extras={
            "text": ["a", "b", "c", "d", "e"],
            "prompt_index": [0, 0, 0, 1, 1],
            "feedback": [None, None, None, "f", None],
        },
    )
    part.annotate(b)
    assert b.extras[REPROMPTED] == [True, False, True, True, False]
    text0 = reprompt_text(part.cfg, "P0", "b", None)
    assert b.extras[TEACHER_PROMPT][0] == [ord(c) for c in "U:" + text0]
    assert b.extras[TEACHER_PROMPT][1] == [1, 2] and b.extras[TEACHER_PROMPT][4] == [3]
    assert b.extras[TEACHER_PROMPT][3] == [ord(c) for c in "U:" + reprompt_text(part.cfg, "P1", None, "f")]
    m = part.pop_metrics()
    assert m["rollout/sdpo_success_group_frac"] == 0.5 and m["rollout/sdpo_reprompt_frac"] == 0.6
    assert m["rollout/sdpo_feedback_frac"] == pytest.approx(0.2)


def _tp_batch(tokenizer, seed=0):
    """2 groups x 2 responses (lengths 3, 5, 1, 4); rows 0, 1, 3 reprompted with longer prompts."""
    g = torch.Generator().manual_seed(seed)
    prompts = [[5, 6, 7], [8, 9]]
    pid, pm = left_pad(prompts, tokenizer.pad_token_id)
    pid, pm = pid.repeat_interleave(2, 0), pm.repeat_interleave(2, 0)
    lengths = torch.tensor([3, 5, 1, 4])
    T = 6
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    resp = torch.randint(20, 1000, (4, T), generator=g) * mask + tokenizer.pad_token_id * (1 - mask)
    teacher = [[5, 6, 7, 40, 41, 42], [5, 6, 7, 43], [8, 9], [8, 44, 45, 9, 46, 47, 48]]
    return RolloutBatch(
        response_mask=mask,
        group_ids=torch.tensor([0, 0, 1, 1]),
        rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]),
        prompt_ids=pid,
        prompt_mask=pm,
        response_ids=resp,
        extras={TEACHER_PROMPT: teacher, REPROMPTED: [True, True, False, True]},
    )


def _logits(model, prompt, resp):
    with torch.no_grad():
        return model(torch.tensor([prompt + resp])).logits[0, len(prompt) - 1 : -1].double()


@pytest.mark.parametrize("pack", [True, False])
def test_teacher_pass_against_plain_forwards(tiny_model, tokenizer, pack):
    """The teacher is a copy of the initial weights; the policy then moves (weights + 0.01 noise). For
    each reprompted row i and response token o_t: teacher log-prob = log_softmax(z_T / 0.7)[o_t] with
    z_T from the INITIAL weights over teacher prompt + response; the top-3 ids are those of the MOVED
    policy's logits over the ORIGINAL prompt; the teacher's top-K log-probs are z_T's at those ids. Row
    2 (not reprompted) and padding stay 0. Micro-batches of 2, chunks of 2 positions. The policy's
    weights are restored after the pass."""
    b = _tp_batch(tokenizer)
    cfg, state = SDPO(topk=3, alpha=0.5), SDPO().init_state()
    init = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    cfg.sync_teacher(state, tiny_model)
    moved = {}
    try:
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for n, p in tiny_model.named_parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
                moved[n] = p.detach().clone()
        out = teacher_pass(tiny_model, b, 0.7, 2, pack, cfg, state, chunk=2)
        for n, p in tiny_model.named_parameters():
            assert torch.equal(p.detach(), moved[n])
        for i in range(4):
            L = int(b.response_mask[i].sum())
            resp = b.response_ids[i, :L].tolist()
            if i == 2:
                assert (out[TEACHER_LOGPROBS][i] == 0).all() and (out[TOPK_IDS][i] == 0).all()
                continue
            student = _logits(tiny_model, b.prompt_ids[i][b.prompt_mask[i].bool()].tolist(), resp)
            with swapped_weights(tiny_model, init):
                zt = _logits(tiny_model, b.extras[TEACHER_PROMPT][i], resp)
            lst = torch.log_softmax(zt / 0.7, -1)
            want = lst.gather(-1, torch.tensor(resp)[:, None]).squeeze(-1)
            torch.testing.assert_close(out[TEACHER_LOGPROBS][i, :L].double(), want, atol=3e-5, rtol=0)
            ids = student.topk(3, -1).indices
            assert torch.equal(out[TOPK_IDS][i, :L], ids)
            torch.testing.assert_close(
                out[TEACHER_TOPK_LOGPROBS][i, :L].double(), lst.gather(-1, ids), atol=3e-5, rtol=0
            )
            assert (out[TEACHER_LOGPROBS][i, L:] == 0).all()
    finally:
        with torch.no_grad():
            for n, p in tiny_model.named_parameters():
                p.copy_(init[n])


def test_trust_region_teacher_mixes_logits(tiny_model, tokenizer):
    """trust_region with c = 0.25: z_T = lerp(z_init, z_policy, 0.25) over the teacher prompt."""
    b = _tp_batch(tokenizer, 1)
    cfg, state = SDPO(teacher="trust_region", teacher_update_rate=0.25), SDPO().init_state()
    init = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    cfg.sync_teacher(state, tiny_model)
    try:
        with torch.no_grad():
            for p in tiny_model.parameters():
                p.mul_(1.02)
        out = teacher_pass(tiny_model, b, 1.0, 4, True, cfg, state)
        i, L = 3, 4
        resp = b.response_ids[i, :L].tolist()
        zp = _logits(tiny_model, b.extras[TEACHER_PROMPT][i], resp)
        with swapped_weights(tiny_model, init):
            zi = _logits(tiny_model, b.extras[TEACHER_PROMPT][i], resp)
        want = torch.log_softmax(0.75 * zi + 0.25 * zp, -1).gather(-1, torch.tensor(resp)[:, None]).squeeze(-1)
        torch.testing.assert_close(out[TEACHER_LOGPROBS][i, :L].double(), want, atol=3e-5, rtol=0)
    finally:
        with torch.no_grad():
            for n, p in tiny_model.named_parameters():
                p.copy_(init[n])


def test_behaviour_pass_request_from_preset(tiny_model, tokenizer):
    """The preset's loss asks for the teacher pass; the behaviour pass returns its three keys (and the
    plain log-probs when asked); the part's state gets the teacher weights."""
    algo = PRESETS["sdpo"].build()
    states = {"policy_loss": algo.policy_loss.init_state()}
    req = old_pass_request(algo, states, logprobs=True)
    assert req.any and len(req.teachers) == 1 and not OldPassRequest().any
    out = behaviour_pass(tiny_model, _tp_batch(tokenizer), 1.0, 4, True, req)
    assert set(out) == {"logprobs", TEACHER_LOGPROBS, TOPK_IDS, TEACHER_TOPK_LOGPROBS}
    assert out[TOPK_IDS].shape == (4, 6, 100) and states["policy_loss"]["teacher"] is not None
