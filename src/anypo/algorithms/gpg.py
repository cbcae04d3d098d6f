"""GPG preset."""

from __future__ import annotations

from anypo.advantages import GPGAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import Reinforce
from anypo.samplers import UniformConfig


def gpg() -> AlgoConfig:
    """GPG: plain policy gradient on group-centred rewards scaled by ``alpha = B / (B - M)``.

    "GPG: A Simple and Strong Reinforcement Learning Baseline for Model Reasoning",
    https://arxiv.org/abs/2504.02546, Sec. 3 (see ``anypo.advantages.GPGAdvantage``): the original
    objective ``-A log pi`` with no surrogate, no clipping, no critic, no reference model and no KL;
    ``F_norm = 1`` (no std division, the paper's best row) and the gradient-estimation correction
    ``alpha = B / (B - M)``. Settings of the official run (github.com/AMAP-ML/GPG ``open-r1/train.sh``
    and ``recipes/Qwen2.5-Math-7B/grpo/config_simple_rl_math_l35_v1.yaml``): token mean over the
    batch, one update per generation batch, G = 8, lr 1e-6, temperature 1.0, ``beta = 0``.

    Deviation: the official trainer re-generates until at least half of the groups carry a signal
    (``min_inverse_alpha 0.5``, the paper's ``beta_th``), a sampler this preset does not have; alpha is
    therefore not bounded by 2 here (``--algo.advantage.max-alpha 2`` bounds it).
    """
    return AlgoConfig(
        advantage=GPGAdvantage(std_normalize=False),
        policy_loss=Reinforce(aggregation="token_mean"),
        regularizers=(),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=None,
    )


PRESET = Preset(
    name="gpg",
    title="GPG: A Simple and Strong Reinforcement Learning Baseline for Model Reasoning",
    arxiv="2504.02546",
    status="verified",
    build=gpg,
    summary="Plain policy gradient, centred rewards scaled by B/(B-M) for groups without signal; no KL.",
)
