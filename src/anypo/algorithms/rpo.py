"""RPO preset (regularized preference optimisation: DPO plus an SFT term on the chosen responses)."""

from __future__ import annotations

from anypo.config import Preset
from anypo.losses.preference import RPO


def rpo(beta: float = 0.01, eta: float = 0.005, sft_reduction: str = "seq_sum"):
    """RPO: ``L = (1/P) sum_i [-log sigmoid(beta d_i) - eta beta log pi(y_w,i|x_i)]``.

    "Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an Adversarial
    Regularizer", https://arxiv.org/abs/2405.16436 (NeurIPS 2024), Algorithm 2: the DPO loss plus
    an SFT (negative log-likelihood) term that imitates a baseline distribution, here the chosen
    responses. The scaling is the authors' code for the paper's main results
    (YSLIU627/Regularized-Preference-Optimization at d0389c4,
    ``alignment-handbook/scripts/rpo_trainer.py::dpo_loss``: ``losses -= policy_chosen_logps *
    beta * eta``, ``policy_chosen_logps`` the summed log-prob of the chosen response, then the mean
    over pairs): the SFT term is weighted by ``eta * beta`` and sums over tokens ("cumulative"). The
    paper's equation number was not read (only the abstract and the code).

    Defaults (the authors' recipe ``recipes/zephyr-7b-beta/rpo/config_full.yaml``): beta 0.01,
    eta 0.005 (lr 5e-7, 1 epoch, cosine schedule, warm-up ratio 0.1 there: run settings).

    Variants: the repo's README and the paper's Appendix F also report an "average" SFT loss (its
    OpenRLHF code: per-sequence token mean, ``nll_loss_coef`` 0.2 with beta 0.5); TRL's RPO
    (``loss_type=["sigmoid", "sft"]``) uses a token mean over all chosen tokens of the batch with
    weight eta: ``--algo.loss.sft-reduction token_mean --algo.loss.sft-weight <eta>``. Not TRL's
    ``rpo_alpha``, which is Iterative Reasoning Preference Optimization (arXiv 2404.19733).

    Args:
        beta: the DPO KL strength.
        eta: the SFT coefficient of the paper; the loss's ``sft_weight`` is ``eta * beta`` (as the code).
        sft_reduction: ``seq_sum`` (the code: summed NLL of each chosen response, mean over pairs) or
            ``token_mean`` (mean NLL over all chosen tokens of the step).

    Returns:
        The ``PrefAlgoConfig`` of the preference loop.
    """
    from anypo.train_pref import PrefAlgoConfig

    return PrefAlgoConfig(loss=RPO(beta=beta, sft_weight=eta * beta, sft_reduction=sft_reduction))


PRESET = Preset(
    name="rpo",
    title="Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an Adversarial Regularizer",
    arxiv="2405.16436",
    status="verified",
    build=rpo,
    summary="DPO (beta 0.01) plus eta*beta x the summed NLL of the chosen response (eta 0.005), as the authors' code.",
    kind="preference",
)
