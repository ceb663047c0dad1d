"""Search over packed codes: exact Hamming ranking and radius search."""
from .flat import Hit, check_compatible, knn, merge_hits, within_radius

__all__ = ["Hit", "check_compatible", "knn", "merge_hits", "within_radius"]
