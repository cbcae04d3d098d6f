"""SRPO preset (offline preference optimisation of a generator and a self-improver in one network)."""

from __future__ import annotations

from anypo.config import Preset
from anypo.losses.revision import DEFAULT_REVISION_TEMPLATE
from anypo.losses.srpo import SRPO


def srpo(beta: float = 0.1, alpha: float = 0.8, revision_template: str = DEFAULT_REVISION_TEMPLATE):
    """SRPO: ``L = (1/P) sum_i alpha l_SI,i + (1 - alpha) l_G,i`` on fixed preference pairs.

    "Self-Improving Robust Preference Optimization", https://arxiv.org/abs/2406.01660 (Choi et al.,
    Cohere; the offline loss ``L_alpha``, equation number not read). One network is the generator
    ``pi(y|x)`` (after the plain prompt) and the self-improver ``pi(y'|x, y)`` (after a revision prompt
    ``R(x, y)``). With ``h`` the generator's log-ratio to the frozen initial policy and ``g(t|y)`` the
    self-improver's log-ratio of response ``t`` after ``R(x, y)``:

        l_SI = (beta (g(y_w|y_l) - g(y_l|y_l)) - 1/2)^2 + (beta (g(y_w|y_w) - g(y_l|y_w)) - 1/2)^2
        l_G  = (beta (h_w - h_l + g(y_w|y_l) - g(y_l|y_w)) - 1)^2

    Status **reconstructed**: the paper's body could not be read and the authors released no code.
    The formula is derived from the abstract's KL-regularised min-max objective (closed-form inner
    maximiser ``pi+* ~ pi_ref exp(P/beta)``, outer minimiser ``pi* ~ pi_ref / Z``; the steps are in
    ``anypo.losses.srpo``) and agrees with TRL pull request #1772 (huggingface/trl, closed unmerged,
    a third party's implementation). Defaults beta 0.1, alpha 0.8 are that pull request's; the revision
    template is ours (the paper's wording was not read).

    Deviations and limits: hard labels (``P(y_w > y_l) = 1``); the reference of both roles is the
    initial policy, its log-probs cached once per run (six sequences per pair: two plain, four after a
    revision prompt); the paper's N-step revision at inference (``y_{n+1} ~ pi(.|R(x, y_n))``) is not
    part of the training loop's evaluation. Each step runs three packed passes per micro-batch.

    Args:
        beta: the KL strength of both roles.
        alpha: the weight of the self-improvement terms (``1 - alpha``: the robust generator term).
        revision_template: the revision prompt, with ``{prompt}`` and ``{response}``.

    Returns:
        The ``PrefAlgoConfig`` of the preference loop.
    """
    from anypo.train_pref import PrefAlgoConfig

    return PrefAlgoConfig(loss=SRPO(beta=beta, alpha=alpha, revision_template=revision_template))


PRESET = Preset(
    name="srpo",
    title="Self-Improving Robust Preference Optimization",
    arxiv="2406.01660",
    status="reconstructed",
    build=srpo,
    summary="Offline pairs; one network as generator and self-improver (revision prompt); squared "
    "self-improvement (targets 1/2) and robust-generator (target 1) regressions mixed by alpha 0.8, beta 0.1.",
    kind="preference",
)
