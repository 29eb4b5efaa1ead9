"""Necks: modules between backbone and heads that map a feature dict to a feature dict plus one new entry."""

from .jpu import JPU, JPU_X, JointUpsamplingUnit, SeparableConv2d

__all__ = ["JPU", "JPU_X", "JointUpsamplingUnit", "SeparableConv2d"]
