"""Presets: every named method builds an AlgoConfig of registered parts with its paper's
hyperparameters, declares its needs, has a docs page and a paper-index entry."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from anypo import registry
from anypo.algorithms import PRESETS
from anypo.config import AlgoConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"
BASELINES = {"grpo", "dr_grpo", "dapo", "gspo", "cispo", "sapo", "luspo", "rloo", "reinforce_pp", "ppo"}
EXPECTED = set(PRESETS)  # every registered preset meets the checks below


def build(name: str) -> AlgoConfig:
    try:
        return PRESETS[name].build()
    except ImportError as e:  # only dapo imports a part written elsewhere (anypo.rewards.shaping)
        pytest.skip(f"{name} needs a part that is not installed: {e}")


def test_preset_names_and_metadata():
    assert set(PRESETS) >= BASELINES
    for name, p in PRESETS.items():
        assert p.name == name and p.title and p.summary
        # a source not on arXiv (cdpo: a note) has arxiv "" and its URL in the docstring
        assert re.fullmatch(r"\d{4}\.\d{4,5}", p.arxiv) or (p.arxiv == "" and "https://" in p.build.__doc__), name
        assert p.status in ("verified", "reconstructed"), (name, p.status)
        assert p.build.__doc__ and "arxiv.org/abs/" in p.build.__doc__
    assert PRESETS["luspo"].status == "reconstructed" and PRESETS["grpo"].status == "verified"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_parts_are_registered(name):
    algo = build(name)
    if PRESETS[name].kind == "preference":  # the preference loop's config: one registered preference loss
        from anypo.train_pref import PrefAlgoConfig

        assert isinstance(algo, PrefAlgoConfig)
        registry.registry("preference_loss").name_of(algo.loss)
        return
    if PRESETS[name].kind == "reward_model":  # the reward-model loop: the Bradley-Terry objective
        from anypo.train_rm import RMAlgoConfig

        assert isinstance(algo, RMAlgoConfig) and algo.center_rewards_coef == 0.0
        return
    if PRESETS[name].kind == "preference_online":  # the online preference loop: pairing, reference mix, loss
        from anypo.train_pref_online import OnlinePrefAlgoConfig

        assert isinstance(algo, OnlinePrefAlgoConfig)
        registry.registry("preference_loss").name_of(algo.loss)
        assert abs(algo.ref_initial + algo.ref_previous + algo.ref_before - 1.0) < 1e-12
        return
    assert isinstance(algo, AlgoConfig)
    registry.registry("advantage").name_of(algo.advantage)
    registry.registry("policy_loss").name_of(algo.policy_loss)
    for r in algo.regularizers:
        registry.registry("regularizer").name_of(r)
    if algo.sampler is not None:
        registry.registry("sampler").name_of(algo.sampler)
    if algo.value_loss is not None:
        registry.registry("value_loss").name_of(algo.value_loss)
    for r in algo.reward_shaping:
        registry.registry("reward").name_of(r)
    assert algo.needs("values") == (algo.value_loss is not None)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_config_round_trips_through_json(name):
    """The resolved config is saved as JSON and re-loaded on --resume."""
    from anypo.config import from_jsonable
    from anypo.runs import to_jsonable

    algo = build(name)
    assert from_jsonable(to_jsonable(algo)) == algo


def test_grpo_hyperparameters():
    """DeepSeekMath: beta 0.04 with k3, eps 0.2, seq-mean-token-mean, one update per batch."""
    a = build("grpo")
    assert registry.registry("advantage").name_of(a.advantage) == "grpo"
    assert (a.policy_loss.eps_low, a.policy_loss.eps_high, a.policy_loss.aggregation) == (
        0.2,
        0.2,
        "seq_mean_token_mean",
    )
    (kl,) = a.regularizers
    assert (kl.coef, kl.estimator, kl.aggregation) == (0.04, "k3", "seq_mean_token_mean")
    assert a.needs("ref_logprobs") and not a.needs("values")
    assert (a.ppo_epochs, a.minibatch_prompts) == (1, None)


def test_dr_grpo_hyperparameters():
    a = build("dr_grpo")
    assert registry.registry("advantage").name_of(a.advantage) == "dr_grpo"
    assert a.policy_loss.aggregation == "seq_mean_token_sum_norm" and not a.regularizers
    assert PRESETS["dr_grpo"].build(norm_length=512).policy_loss.norm_length == 512
    assert not a.needs("ref_logprobs")


def test_dapo_hyperparameters():
    """Clip-higher 0.2/0.28, token-mean, dynamic sampling on correctness, overlong shaping scaled to the
    run's limit by default (L_cache = L_max // 5, the paper's 4096/20480) or the paper's 20480/4096, no KL."""
    a = build("dapo")
    assert (a.policy_loss.eps_low, a.policy_loss.eps_high, a.policy_loss.aggregation) == (0.2, 0.28, "token_mean")
    assert registry.registry("sampler").name_of(a.sampler) == "dynamic_sampling"
    assert not a.regularizers and not a.needs("ref_logprobs")
    assert a.sampler.metric == "correct"
    (shaping,) = a.reward_shaping
    assert (shaping.max_tokens, shaping.cache_tokens) == (None, None)
    (paper,) = PRESETS["dapo"].build(max_tokens=20480, cache_tokens=4096).reward_shaping
    assert (paper.max_tokens, paper.cache_tokens) == (20480, 4096)
    assert a.minibatch_prompts == 32  # 512 prompts / 16 updates (paper Sec. 4.1)


def test_sequence_and_gate_presets():
    g, lu, c, s = build("gspo"), build("luspo"), build("cispo"), build("sapo")
    assert (g.policy_loss.eps_low, g.policy_loss.eps_high, g.policy_loss.level) == (3e-4, 4e-4, "sequence")
    assert g.policy_loss.aggregation == "seq_mean_token_mean" and g.minibatch_prompts == 64
    assert lu.policy_loss.aggregation == "seq_mean_token_sum"
    assert (c.policy_loss.eps_low, c.policy_loss.eps_high, c.policy_loss.aggregation) == (1.0, 0.28, "token_mean")
    assert (s.policy_loss.tau_pos, s.policy_loss.tau_neg) == (1.0, 1.05)
    for a in (g, lu, c, s):
        assert not a.regularizers and not a.needs("ref_logprobs")


def test_rloo_reinforce_pp_ppo():
    r, rpp, p = build("rloo"), build("reinforce_pp"), build("ppo")
    assert registry.registry("policy_loss").name_of(r.policy_loss) == "reinforce"
    assert (r.ppo_epochs, r.minibatch_prompts) == (1, None)  # REINFORCE is on-policy only
    assert rpp.advantage.gamma == 1.0 and rpp.needs("ref_logprobs")
    assert registry.registry("advantage").name_of(p.advantage) == "gae"
    assert p.needs("values") and registry.registry("value_loss").name_of(p.value_loss) == "clipped"
    assert p.value_loss.cliprange == 0.5


def test_rec_family_presets():
    """Trinity-RFT's REC example: A = R - mean (no std), token mean, REC-OneSide-NoIS 0.2 / 0.2, OPMD
    and AsymRE tau 0.1, one update per batch, rollouts refreshed every 20 steps (sync_interval 20)."""
    from anypo.rollout.replay import Replay

    rec, opmd, asymre = build("rec"), build("opmd"), build("asymre")
    assert (rec.policy_loss.clip_mode, rec.policy_loss.weight) == ("one_side", "none")
    assert (rec.policy_loss.eps_low, rec.policy_loss.eps_high) == (0.2, 0.2)
    assert opmd.policy_loss.tau == asymre.policy_loss.tau == 0.1
    for a in (rec, opmd, asymre):
        assert registry.registry("advantage").name_of(a.advantage) == "dr_grpo"
        assert a.policy_loss.aggregation == "token_mean" and not a.regularizers
        assert (a.ppo_epochs, a.minibatch_prompts) == (1, None)
        assert a.replay_schedule() == Replay(sync_interval=20, sync_offset=0)
    assert not PRESETS["rec"].build(sync_interval=1).replay_schedule().active


def test_preference_presets():
    """dpo, ipo, cdpo, rpo run in the preference loop with their papers' (or reference code's)
    hyperparameters, and all use the frozen initial policy as reference."""
    from anypo.registry import registry as reg

    losses = {n: PRESETS[n].build().loss for n in ("dpo", "ipo", "cdpo", "rpo")}
    assert all(PRESETS[n].kind == "preference" and losses[n].needs_ref_logprobs for n in losses)
    assert {n: reg("preference_loss").name_of(c) for n, c in losses.items()} == {
        "dpo": "dpo", "ipo": "ipo", "cdpo": "cdpo", "rpo": "rpo"
    }  # fmt: skip
    assert losses["dpo"].beta == 0.1
    assert (losses["ipo"].beta, losses["ipo"].length_normalize) == (0.1, False)  # Eq. 17 as printed
    assert (losses["cdpo"].beta, losses["cdpo"].label_smoothing) == (0.1, 0.1)
    assert (losses["rpo"].beta, losses["rpo"].sft_reduction) == (0.01, "seq_sum")
    assert losses["rpo"].sft_weight == pytest.approx(0.005 * 0.01)  # eta * beta, as the authors' code


def test_srpo_preset():
    """SRPO (reconstructed): the srpo loss with beta 0.1 and alpha 0.8 (TRL pull request #1772's values),
    our revision template; it needs the reference and the revision-conditioned log-probs, which the
    offline preference loop provides."""
    from anypo.losses.revision import DEFAULT_REVISION_TEMPLATE
    from anypo.registry import registry as reg

    p = PRESETS["srpo"]
    algo = p.build()
    assert (p.kind, p.status, reg("preference_loss").name_of(algo.loss)) == ("preference", "reconstructed", "srpo")
    assert (algo.loss.beta, algo.loss.alpha, algo.loss.revision_template) == (0.1, 0.8, DEFAULT_REVISION_TEMPLATE)
    assert algo.needs("ref_logprobs") and algo.needs("revision_logprobs")
    assert p.build(alpha=0.5).loss.alpha == 0.5


def test_online_preference_presets():
    """online_dpo: 2 policy samples, fixed reference; iterative_dpo: best vs worst of K = 8 samples of
    pi_t against the fixed pi_1 (RLHFlow's run_loop.sh); sppo: best vs worst of K = 5 samples of pi_t
    against pi_t (beta 0.001, its square loss); inpo: IPO with tau = 1/eta against
    eta tau log pi_ref + (1 - eta tau) log pi_t (eta 10, tau 0.01); apo: DPO against
    (1 + alpha) log pi_t - alpha log pi_{t-1} (alpha 0.3); xpo: policy vs reference sample, alpha 1e-5."""
    from anypo.registry import registry as reg

    a = {n: PRESETS[n].build() for n in ("online_dpo", "iterative_dpo", "sppo", "inpo", "apo", "xpo")}
    assert all(PRESETS[n].kind == "preference_online" for n in a)
    name = {n: reg("preference_loss").name_of(c.loss) for n, c in a.items()}
    assert name == {
        "online_dpo": "dpo",
        "iterative_dpo": "dpo",
        "sppo": "sppo",
        "inpo": "ipo",
        "apo": "dpo",
        "xpo": "xpo",
    }
    refs = {n: (c.ref_initial, c.ref_previous, c.ref_before) for n, c in a.items()}
    assert refs["online_dpo"] == refs["xpo"] == refs["iterative_dpo"] == (1.0, 0.0, 0.0)  # RLHFlow run_loop.sh
    assert refs["sppo"] == (0.0, 1.0, 0.0)
    assert refs["inpo"] == pytest.approx((0.1, 0.9, 0.0)) and refs["apo"] == pytest.approx((0.0, 1.3, -0.3))
    assert (a["online_dpo"].pairing, a["online_dpo"].samples_per_prompt, a["online_dpo"].sample_from) == (
        "two",
        2,
        "policy",
    )
    assert (a["sppo"].pairing, a["sppo"].samples_per_prompt, a["sppo"].loss.beta) == ("best_worst", 5, 0.001)
    assert all(
        a[n].sample_from == "iterate" and a[n].steps_per_iteration == 10
        for n in ("iterative_dpo", "sppo", "inpo", "apo")
    )
    assert a["inpo"].loss.beta == pytest.approx(0.1) and not a["inpo"].loss.length_normalize
    assert (a["xpo"].pairing, a["xpo"].loss.alpha, a["xpo"].loss.beta) == ("policy_vs_reference", 1e-5, 0.1)
    assert a["iterative_dpo"].samples_per_prompt == 8
    assert PRESETS["iterative_dpo"].build(reference="previous_iterate").ref_previous == 1.0


def test_rpo_preset_matches_the_authors_code_on_the_spec_pair():
    """The RPO authors' code (rpo_trainer.py::dpo_loss): ``loss = -logsig(beta d) - eta beta log pi(y_w)``
    per pair. Spec section 5's toy pair: chosen tokens -2, -1, -3, -4 (log pi(y_w) = -10), h_w = 1,
    h_l = -0.5, beta 0.01, eta 0.005: -logsig(0.015) = 0.685675 (spec), plus 0.005 * 0.01 * 10 = 5e-4,
    so 0.686175."""
    import math

    import torch

    from anypo.registry import get
    from anypo.types import PolicyOutput, PreferenceBatch

    cfg = PRESETS["rpo"].build().loss
    fn = get("preference_loss", "rpo")[0]
    tok_w = torch.tensor([[-2.0, -1.0, -3.0, -4.0]], dtype=torch.float64)
    ref_w = torch.tensor([[-11.0, 0.0, 0.0, 0.0]], dtype=torch.float64)  # sums to -11: h_w = 1
    tok_l = torch.tensor([[-12.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    ref_l = torch.tensor([[-11.5, 0.0, 0.0, 0.0]], dtype=torch.float64)  # h_l = -0.5
    mask = torch.ones(1, 4)
    batch = PreferenceBatch(
        chosen_mask=mask, rejected_mask=mask, ref_chosen_logprobs=ref_w, ref_rejected_logprobs=ref_l
    )
    out = fn(PolicyOutput(logprobs=tok_w), PolicyOutput(logprobs=tok_l), batch, cfg)
    expected = math.log1p(math.exp(-0.01 * 1.5)) + 0.005 * 0.01 * 10.0
    assert expected == pytest.approx(0.686175, abs=1e-6)
    assert float(out.loss) == pytest.approx(expected, abs=1e-12)


def test_remax_preset():
    """ReMax (Algorithm 1 and the official actor loss): the greedy-reward baseline, token-mean
    REINFORCE, one on-policy update, no KL; not group-relative (the paper uses one sample)."""
    a = build("remax")
    assert registry.registry("advantage").name_of(a.advantage) == "remax" and a.advantage.gamma == 1.0
    assert a.needs("greedy_rewards") and not a.needs("ref_logprobs") and not a.regularizers
    assert registry.registry("policy_loss").name_of(a.policy_loss) == "reinforce"
    assert a.policy_loss.aggregation == "token_mean" and (a.ppo_epochs, a.minibatch_prompts) == (1, None)
    assert not a.advantage.group_relative and PRESETS["remax"].build(gamma=0.99).advantage.gamma == 0.99


def test_icepop_preset():
    """IcePop = the grpo preset with the policy loss weighted by M(k) on [0.5, 5.0] (token level,
    masked); it declares that it needs the engine's log-probs next to the learner's."""
    a, g = build("icepop"), build("grpo")
    pl = a.policy_loss
    assert (pl.tis, pl.tis_mode, pl.tis_floor, pl.tis_cap) == ("token", "mask", 0.5, 5.0)
    assert dataclasses.replace(pl, tis=None, tis_mode="truncate", tis_floor=None, tis_cap=2.0) == g.policy_loss
    assert a.regularizers == g.regularizers and a.advantage == g.advantage
    assert a.needs("rollout_logprobs") and not g.needs("rollout_logprobs")


def test_llds_preset():
    """LLDS = the grpo preset plus LLDS(lambda 0.2, action gate, token mean), at the official mini-batch
    size of 256 prompts (2 updates of the official 512-prompt batch)."""
    a, g = build("llds"), build("grpo")
    assert (a.advantage, a.policy_loss) == (g.advantage, g.policy_loss)
    assert a.regularizers[:-1] == g.regularizers
    reg = a.regularizers[-1]
    assert registry.registry("regularizer").name_of(reg) == "llds"
    assert (reg.coef, reg.gate, reg.aggregation, reg.answer_lambda) == (0.2, "action", "token_mean", None)
    assert a.minibatch_prompts == 256 and PRESETS["llds"].build(minibatch_prompts=1).minibatch_prompts == 1


def test_epo_preset():
    """EPO = the grpo preset plus EPO(c_H 0.001, c_s 1, band (0, 2 H_hist), penalty 0.1, token mode, phase
    weights over 150 steps; the official constant penalty), smoothing every turn (single-turn data), and
    stateful: its entropy history goes into checkpoints."""
    a, g = build("epo"), build("grpo")
    assert (a.advantage, a.policy_loss, a.regularizers[:-1]) == (g.advantage, g.policy_loss, g.regularizers)
    reg = a.regularizers[-1]
    assert registry.registry("regularizer").name_of(reg) == "epo"
    assert (reg.coef, reg.smooth_coef, reg.min_ratio, reg.max_ratio, reg.penalty) == (0.001, 1.0, 0.0, 2.0, 0.1)
    assert (reg.mask_mode, reg.smoothing, reg.phase_weights, reg.phase_steps, reg.smooth_from_turn) == (
        "token",
        "code",
        True,
        150,
        0,
    )
    assert a.needs("entropy") and set(a.stateful_parts()) == {"regularizers.1"}
    assert PRESETS["epo"].build(smoothing="hinge").regularizers[-1].smoothing == "hinge"


def test_clip_cov_and_kl_cov_presets():
    """The official recipes (PRIME-RL/Entropy-Mechanism-of-RL recipe/dapo/7b_*_cov.sh): Clip-Cov with
    clip_cov_ratio 2e-4, band (1, 5), PPO clip 1, dynamic sampling, mini-batches of 32 prompts; KL-Cov
    with k_percent 0.2 / 100 = 2e-3, coef 1, one update per step. Both select tokens per mini-batch."""
    c, k = build("clip_cov"), build("kl_cov")
    pc, pk = c.policy_loss, k.policy_loss
    assert (pc.frac, pc.cov_low, pc.cov_high, pc.eps_low, pc.eps_high) == (2e-4, 1.0, 5.0, 1.0, 1.0)
    assert c.minibatch_prompts == 32 and registry.registry("sampler").name_of(c.sampler) == "dynamic_sampling"
    assert (pk.frac, pk.beta, k.minibatch_prompts, k.ppo_epochs) == (2e-3, 1.0, None, 1)
    assert c.needs("minibatch_prepare") and k.needs("minibatch_prepare")
    assert not build("grpo").needs("minibatch_prepare")
    assert pc.aggregation == pk.aggregation == "token_mean" and not c.regularizers and not k.regularizers


def test_dcpo_and_lp_reg_presets():
    """DCPO: the official code's H0 0.5, T 1.2 / 0.8, cap 0.1, threshold 0.05, PPO clip 0.2 with dual
    clip 3, token mean, updates of 128 prompts; it needs the tempered old log-probs and keeps state.
    Lp-Reg: the authors' on-policy recipe, PPO clip 1.0 / 9.0 token mean + LpReg(1, 0.02, minp, 1%, 0),
    one update; it needs the proxy log-probs."""
    d, lr = build("dcpo"), build("lp_reg")
    adv = d.advantage
    assert (adv.entropy_base, adv.temperature_high, adv.temperature_low, adv.alpha_cap) == (0.5, 1.2, 0.8, 0.1)
    assert adv.success_threshold == 0.05 and PRESETS["dcpo"].build(entropy_base=0.25).advantage.entropy_base == 0.25
    p = d.policy_loss
    assert (p.eps_low, p.eps_high, p.dual_clip, p.aggregation) == (0.2, 0.2, 3.0, "token_mean")
    assert d.minibatch_prompts == 128
    assert d.needs("old_tempered_logprobs") and set(d.stateful_parts()) == {"advantage"} and not d.regularizers
    (reg,) = lr.regularizers
    assert (reg.beta, reg.kappa, reg.filter, reg.neg_frac, reg.pos_frac) == (1.0, 0.02, "minp", 0.01, 0.0)
    assert (lr.policy_loss.eps_low, lr.policy_loss.eps_high, lr.policy_loss.aggregation) == (1.0, 9.0, "token_mean")
    assert lr.minibatch_prompts is None and lr.needs("old_proxy_logprobs")


def test_mdpo_lm_preset():
    """The official multistep-SGD MDPO: 5 full-batch updates per rollout batch (sgd_steps), t_k over K
    iterations counted in those updates, exact KL to pi_k (the step-start weights, a declared need),
    no clipping; GRPO advantages, token mean."""
    a = build("mdpo_lm")
    pl = a.policy_loss
    assert (pl.kl, pl.total_iterations, pl.updates_per_iteration, pl.aggregation) == ("exact", 30, 5, "token_mean")
    assert (a.ppo_epochs, a.minibatch_prompts) == (5, None) and a.needs("old_full_logprobs") and a.needs("logits")
    assert set(a.stateful_parts()) == {"policy_loss"}
    b = PRESETS["mdpo_lm"].build(total_iterations=100, sgd_steps=3)
    assert (b.policy_loss.total_iterations, b.policy_loss.updates_per_iteration, b.ppo_epochs) == (100, 3, 3)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_docs_page_and_paper_index(name):
    """The page names the paper (title, arXiv abs link), explains the metrics, and has a Result section
    (which the trainer's 30-step run fills)."""
    page = (DOCS / "algorithms" / f"{name}.md").read_text()
    p = PRESETS[name]
    assert f"https://arxiv.org/abs/{p.arxiv}" in page and p.title in " ".join(page.split())
    assert "## Logged metrics" in page and "\n## Result\n" in page
    index = (DOCS / "paper_index.md").read_text()
    assert f"`{name}`" in index and p.arxiv in index


def test_readme_lists_every_preset():
    """The README's method table links every registered preset's docs page."""
    readme = (DOCS.parent / "README.md").read_text()
    missing = [n for n in PRESETS if f"(docs/algorithms/{n}.md)" not in readme]
    assert not missing, f"README.md's Methods table lacks {missing}"
