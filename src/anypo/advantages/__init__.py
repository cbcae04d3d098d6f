"""Advantage estimators (kind ``advantage``): ``fn(batch, cfg) -> Tensor [N, T]``.

Registration is by the explicit imports below; ``grep 'register("grpo"'`` finds each entry.
An advantage part may also fill ``batch.returns`` (value targets) when it ``needs_values``.
"""

from anypo.advantages.aepo import AEPOAdvantage, aepo
from anypo.advantages.arm import ARMAdvantage, arm
from anypo.advantages.bnpo import BNPOAdvantage, bnpo
from anypo.advantages.chi2 import Chi2Occupancy, chi2_occupancy
from anypo.advantages.dcpo import DCPOAdvantage, dcpo
from anypo.advantages.drpo import DRPOAdvantage, drpo
from anypo.advantages.egae import EGAEAdvantage, egae
from anypo.advantages.gpg import GPGAdvantage, gpg
from anypo.advantages.maxrl import MaxRLAdvantage, maxrl
from anypo.advantages.opo import OPOAdvantage, opo
from anypo.advantages.outcome import (
    DrGRPOAdvantage,
    GRPOAdvantage,
    ReinforcePPBaselineAdvantage,
    RLOOAdvantage,
    dr_grpo,
    grpo,
    reinforce_pp_baseline,
    rloo,
)
from anypo.advantages.passk import PassKAdvantage, passk
from anypo.advantages.remax import ReMaxAdvantage, remax
from anypo.advantages.riskpo import RiskPOAdvantage, riskpo
from anypo.advantages.safe import SAFEAdvantage, safe
from anypo.advantages.spo import SPOAdvantage, spo
from anypo.advantages.token import (
    GAEAdvantage,
    ReinforcePPAdvantage,
    discounted_returns,
    gae,
    gae_advantages_returns,
    reinforce_pp,
    token_level_rewards,
)
from anypo.advantages.xrpo import XRPOAdvantage, xrpo

__all__ = [
    "AEPOAdvantage",
    "ARMAdvantage",
    "BNPOAdvantage",
    "Chi2Occupancy",
    "DCPOAdvantage",
    "DRPOAdvantage",
    "DrGRPOAdvantage",
    "EGAEAdvantage",
    "GAEAdvantage",
    "GPGAdvantage",
    "GRPOAdvantage",
    "MaxRLAdvantage",
    "OPOAdvantage",
    "PassKAdvantage",
    "ReMaxAdvantage",
    "RLOOAdvantage",
    "ReinforcePPAdvantage",
    "ReinforcePPBaselineAdvantage",
    "RiskPOAdvantage",
    "SAFEAdvantage",
    "SPOAdvantage",
    "XRPOAdvantage",
    "aepo",
    "arm",
    "bnpo",
    "chi2_occupancy",
    "dcpo",
    "discounted_returns",
    "drpo",
    "egae",
    "dr_grpo",
    "gae",
    "gae_advantages_returns",
    "gpg",
    "grpo",
    "maxrl",
    "opo",
    "passk",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "remax",
    "riskpo",
    "rloo",
    "safe",
    "spo",
    "token_level_rewards",
    "xrpo",
]
