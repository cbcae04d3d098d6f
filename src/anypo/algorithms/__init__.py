"""Named methods: each module builds an ``AlgoConfig`` from registered parts and carries its paper.

``PRESETS[name].build()`` returns the config; ``anypo list`` prints name, paper, arXiv id and status.
One module per preset; add a new one to ``_MODULES`` (the order is the order of ``anypo list``).
"""

from __future__ import annotations

import importlib

from anypo.config import Preset

_MODULES = (
    # baselines
    "grpo",
    "dr_grpo",
    "dapo",
    "gspo",
    "cispo",
    "sapo",
    "luspo",
    "rloo",
    "reinforce_pp",
    "ppo",
    # baselines other libraries ship (verl, SkyRL, prime-rl)
    "gpg",
    "maxrl",
    "opo",
    "passk",
    "gmpo",
    "dppo",
    "remax",
    "icepop",
    # RLVR methods
    "bnpo",
    "drpo",
    "riskpo",
    "xrpo",
    "dhpo",
    "reg_grpo",
    # the off-policy group-REINFORCE family, on stale rollouts
    "rec",
    "opmd",
    "asymre",
    "rover",
    # exploration and entropy control
    "llds",
    "epo",
    "clip_cov",
    "kl_cov",
    "dcpo",
    "aepo",
    "orpo_proxy",
    "lp_reg",
    "arm",
    "sdpo",
    # trust regions without clipping
    "mdpo_lm",
    "r2vpo",
    # actor-critic methods
    "tppo",
    "safe",
    # data selection, curricula and guidance
    "curriculum",
    "vas",
    "scaf_grpo",
    "ghpo",
    "gdro",
    "replay",
    "drpo_reset",
    "igrpo",
    "expo",
    "vspo",
    # offline preference optimisation (kind "preference": anypo.train_pref)
    "dpo",
    "ipo",
    "cdpo",
    "rpo",
    "srpo",
    # self-play preference optimisation in the online RL loop
    "spo",
    # DPO then PPO with the DPO policy's token rewards (online RL loop)
    "rto",
    # a learned reward model (kind "reward_model": anypo.train_rm), a preference source for the loops above
    "reward_model",
    # online / iterative preference optimisation (kind "preference_online": anypo.train_pref_online)
    "online_dpo",
    "iterative_dpo",
    "sppo",
    "inpo",
    "apo",
    "xpo",
)

PRESETS: dict[str, Preset] = {}
for _name in _MODULES:
    _preset = importlib.import_module(f"anypo.algorithms.{_name}").PRESET
    PRESETS[_preset.name] = _preset

__all__ = ["PRESETS"]
