"""Named methods: each module builds an ``AlgoConfig`` from registered parts and carries its paper.

``PRESETS[name].build()`` returns the config; ``anypo list`` prints name, paper, arXiv id and status.
"""

from __future__ import annotations

from anypo.algorithms import cispo, dapo, dr_grpo, grpo, gspo, luspo, ppo, reinforce_pp, rloo, sapo
from anypo.config import Preset

PRESETS: dict[str, Preset] = {
    m.PRESET.name: m.PRESET for m in (grpo, dr_grpo, dapo, gspo, cispo, sapo, luspo, rloo, reinforce_pp, ppo)
}

__all__ = ["PRESETS"]
