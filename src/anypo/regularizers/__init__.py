"""Regularizers (kind ``regularizer``), registered by the explicit imports below."""

from anypo.regularizers.basic import EntropyBonus, KLPenalty, entropy, kl

__all__ = ["EntropyBonus", "KLPenalty", "entropy", "kl"]
