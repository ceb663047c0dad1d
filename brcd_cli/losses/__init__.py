"""Training objectives, each a small module with its maths in the docstring."""
from .brcd import BRCDLoss, nearest_centre
from .cibhash import CIBHashLoss, bernoulli_kl, nt_xent, straight_through_sign, symmetric_bottleneck
from .crd import CRDLoss
from .fitnet import FitNetLoss
from .kd import KDLoss
from .pkt import PKTLoss
from .rkd import RKDLoss
from .sp import SPLoss

__all__ = [
    "BRCDLoss",
    "CIBHashLoss",
    "CRDLoss",
    "FitNetLoss",
    "KDLoss",
    "PKTLoss",
    "RKDLoss",
    "SPLoss",
    "bernoulli_kl",
    "nearest_centre",
    "nt_xent",
    "straight_through_sign",
    "symmetric_bottleneck",
]
