"""Training objectives, each a small module with its maths in the docstring.

Each distillation method's module registers it (:mod:`.registry`); the imports
below fix the order the built-in methods are listed in (--help, the report).
"""
from .brcd import BRCDLoss, nearest_centre  # isort: skip
from .cibhash import CIBHashLoss, bernoulli_kl, nt_xent, straight_through_sign, symmetric_bottleneck  # isort: skip
from .kd import KDLoss  # isort: skip
from .fitnet import FitNetLoss  # isort: skip
from .rkd import RKDLoss  # isort: skip
from .pkt import PKTLoss  # isort: skip
from .sp import SPLoss  # isort: skip
from .crd import CRDLoss  # isort: skip
from .registry import DistillBatch, Method, MethodContext, Term, get_method, methods, register_method

__all__ = [
    "BRCDLoss",
    "CIBHashLoss",
    "CRDLoss",
    "DistillBatch",
    "FitNetLoss",
    "KDLoss",
    "Method",
    "MethodContext",
    "PKTLoss",
    "RKDLoss",
    "SPLoss",
    "Term",
    "bernoulli_kl",
    "get_method",
    "methods",
    "nearest_centre",
    "nt_xent",
    "register_method",
    "straight_through_sign",
    "symmetric_bottleneck",
]
