"""Regularizers (kind ``regularizer``), registered by the explicit imports below."""

from anypo.regularizers.basic import EntropyBonus, KLPenalty, entropy, kl
from anypo.regularizers.llds import LLDS, llds

__all__ = ["LLDS", "EntropyBonus", "KLPenalty", "entropy", "kl", "llds"]
