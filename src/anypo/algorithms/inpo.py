"""INPO preset: no-regret online mirror descent as an IPO-style loss against a geometric mix of pi_ref and pi_t."""

from __future__ import annotations

from anypo.config import Preset
from anypo.losses.preference import IPO


def inpo(eta: float = 10.0, tau: float = 0.01, samples: int = 4, steps_per_iteration: int = 10):
    """INPO: ``L = (h_t(y_w, y_l) - eta/2)^2`` with
    ``h_t = log pi(y_w)/pi(y_l) - eta tau log pi_ref(y_w)/pi_ref(y_l) - (1 - eta tau) log pi_t(y_w)/pi_t(y_l)``.

    "Iterative Nash Policy Optimization: Aligning LLMs with General Preferences via No-Regret
    Learning", https://arxiv.org/abs/2407.00617. RECONSTRUCTED (spec section 6: only the framing is
    from the abstract; no official code): the online-mirror-descent step
    ``pi_{t+1} ~ pi_t^(1 - eta tau) pi_ref^(eta tau) exp(eta P(y > pi_t))`` regressed pairwise, so
    the normaliser cancels. This is IPO (unnormalised, ``tau_IPO = 1/eta`` so the target
    ``1/(2 tau_IPO) = eta/2``) with the reference column ``eta tau log pi_ref + (1 - eta tau) log pi_t``
    per token (the loop's ``ref_initial = eta tau``, ``ref_previous = 1 - eta tau``): both the
    reference's and the previous iterate's log-probs are kept, as the method needs.

    Defaults are ours (the paper's were not read): eta = 10 (target 5 nats, IPO's scale at tau 0.1),
    eta tau = 0.1; pairs are the oracle's best and worst of K = 4 samples of ``pi_t``; 10 steps per
    iteration.

    Args:
        eta: the mirror-descent step size.
        tau: the KL-regularisation strength toward pi_ref (``eta tau`` in [0, 1]).
        samples: K.
        steps_per_iteration: optimizer steps per iteration.

    Returns:
        The ``OnlinePrefAlgoConfig`` of the online preference loop.
    """
    from anypo.train_pref_online import OnlinePrefAlgoConfig

    if not (eta > 0 and 0.0 <= eta * tau <= 1.0):
        raise ValueError(f"inpo: need eta > 0 and eta * tau in [0, 1], got eta={eta}, tau={tau}")
    mix = eta * tau
    return OnlinePrefAlgoConfig(
        loss=IPO(beta=1.0 / eta, length_normalize=False), samples_per_prompt=samples, pairing="best_worst",
        sample_from="iterate", ref_initial=mix, ref_previous=1.0 - mix, steps_per_iteration=steps_per_iteration,
    )  # fmt: skip


PRESET = Preset(
    name="inpo",
    title="Iterative Nash Policy Optimization: Aligning LLMs with General Preferences via No-Regret Learning",
    arxiv="2407.00617",
    status="reconstructed",
    build=inpo,
    summary="Best/worst of K=4 samples of pi_t, (h_t - eta/2)^2 against eta*tau log pi_ref + (1 - eta*tau) log pi_t (eta 10, eta*tau 0.1).",
    kind="preference_online",
)
