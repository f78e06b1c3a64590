"""The Deep Sets policy: a permutation-invariant encoder of the peer set for SB3's actor-critic."""

from roadsense.policy.deep_sets import DeepSetsExtractor, policy_kwargs

__all__ = ["DeepSetsExtractor", "policy_kwargs"]
