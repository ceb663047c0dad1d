"""Training: the shared loop, teachers, students, clustering and bit masks."""
from .clustering import ClusterResult, bit_consistency, bit_masks, cluster_codes
from .distill import DistillOptions, distill
from .loop import FitOptions, FitResult, fit
from .teacher import TeacherOptions, TrainedModel, train_teacher

__all__ = [
    "ClusterResult",
    "DistillOptions",
    "FitOptions",
    "FitResult",
    "TeacherOptions",
    "TrainedModel",
    "bit_consistency",
    "bit_masks",
    "cluster_codes",
    "distill",
    "fit",
    "train_teacher",
]
