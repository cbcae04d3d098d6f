"""Losses: kinds ``policy_loss`` (``fn(out, batch, cfg)``), ``value_loss`` (``fn(values, batch, cfg)``)
and ``preference_loss`` (``fn(out_chosen, out_rejected, batch, cfg)``).

Registration is by the explicit imports below; ``grep 'register("gspo"'`` finds each entry.
"""

from anypo.losses import preference, preference_online  # noqa: F401  (register the preference_loss kind)
from anypo.losses import srpo as _srpo  # noqa: F401  (registers the srpo preference_loss)
from anypo.losses.common import PolicyLossConfig, RatioLossConfig
from anypo.losses.cov import ClipCov, KLCov, clip_cov, kl_cov
from anypo.losses.critic import SAFEValueLoss, TPPOValueLoss, safe_value, tppo_value
from anypo.losses.dhpo import DHPO, dhpo
from anypo.losses.dppo import DPPO, dppo
from anypo.losses.drpo import DRPO, drpo
from anypo.losses.gmpo import GMPO, gmpo
from anypo.losses.mdpo import MDPOLM, mdpo_lm
from anypo.losses.r2vpo import R2VPO, r2vpo
from anypo.losses.rec import OPMD, REC, AsymRE, asymre, opmd, rec
from anypo.losses.reg_grpo import RegGRPO, reg_grpo
from anypo.losses.rover import ROVER, rover
from anypo.losses.sdpo import SDPO, sdpo
from anypo.losses.sequence import GSPO, LUSPO, gspo, luspo
from anypo.losses.token import CISPO, SAPO, PPOClip, Reinforce, cispo, ppo_clip, reinforce, sapo
from anypo.losses.value import ClippedValueLoss, clipped

__all__ = [
    "CISPO",
    "DHPO",
    "DPPO",
    "DRPO",
    "GMPO",
    "GSPO",
    "LUSPO",
    "MDPOLM",
    "OPMD",
    "R2VPO",
    "REC",
    "ROVER",
    "SDPO",
    "RegGRPO",
    "SAFEValueLoss",
    "TPPOValueLoss",
    "SAPO",
    "AsymRE",
    "ClipCov",
    "ClippedValueLoss",
    "KLCov",
    "PPOClip",
    "PolicyLossConfig",
    "RatioLossConfig",
    "Reinforce",
    "asymre",
    "cispo",
    "clip_cov",
    "clipped",
    "dhpo",
    "dppo",
    "drpo",
    "gmpo",
    "gspo",
    "kl_cov",
    "luspo",
    "mdpo_lm",
    "sdpo",
    "opmd",
    "ppo_clip",
    "r2vpo",
    "rec",
    "reg_grpo",
    "reinforce",
    "rover",
    "safe_value",
    "sapo",
    "tppo_value",
]
