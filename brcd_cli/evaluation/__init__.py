"""Retrieval evaluation of binary codes (mAP@K, tie-aware mAP, precision@N, radius precision, PR curve)."""
from __future__ import annotations

from .metrics import (
    RadiusPrecision,
    average_precision_at_k,
    mean_average_precision,
    precision_at_n,
    precision_recall_curve,
    precision_within_radius,
    precision_within_radius_stats,
    tie_aware_average_precision_at_k,
)

__all__ = [
    "RadiusPrecision",
    "average_precision_at_k",
    "mean_average_precision",
    "precision_at_n",
    "precision_recall_curve",
    "precision_within_radius",
    "precision_within_radius_stats",
    "tie_aware_average_precision_at_k",
]
