"""Regularizers (kind ``regularizer``), registered by the explicit imports below."""

from anypo.regularizers.basic import EntropyBonus, KLPenalty, entropy, kl
from anypo.regularizers.epo import EPO, epo
from anypo.regularizers.llds import LLDS, llds

__all__ = ["EPO", "LLDS", "EntropyBonus", "KLPenalty", "entropy", "epo", "kl", "llds"]
