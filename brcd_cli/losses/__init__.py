"""Training objectives, each a small module with its maths in the docstring."""
from .brcd import BRCDLoss, nearest_centre
from .cibhash import CIBHashLoss, bernoulli_kl, nt_xent, straight_through_sign, symmetric_bottleneck

__all__ = [
    "BRCDLoss",
    "CIBHashLoss",
    "bernoulli_kl",
    "nearest_centre",
    "nt_xent",
    "straight_through_sign",
    "symmetric_bottleneck",
]
