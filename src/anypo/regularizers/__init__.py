"""Regularizers (kind ``regularizer``), registered by the explicit imports below."""

from anypo.regularizers.basic import EntropyBonus, KLPenalty, entropy, kl
from anypo.regularizers.epo import EPO, epo
from anypo.regularizers.expo import ExPOSFT, expo_sft
from anypo.regularizers.llds import LLDS, llds
from anypo.regularizers.lp_reg import LpReg, lp_reg
from anypo.regularizers.safe import SAFEControl, safe

__all__ = [
    "EPO",
    "LLDS",
    "EntropyBonus",
    "ExPOSFT",
    "KLPenalty",
    "LpReg",
    "SAFEControl",
    "entropy",
    "epo",
    "expo_sft",
    "kl",
    "llds",
    "lp_reg",
    "safe",
]
