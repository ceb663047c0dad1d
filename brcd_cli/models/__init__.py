"""Hashing models, checkpoints and pretrained weights."""
from .checkpoint import code_space_of, load_model, read_config, save_model
from .hashing import HashModel, ModelConfig, VALID_BITS, create_backbone
from .pretrained import cached_weights, load_backbone_weights

__all__ = [
    "HashModel",
    "ModelConfig",
    "VALID_BITS",
    "cached_weights",
    "code_space_of",
    "create_backbone",
    "load_backbone_weights",
    "load_model",
    "read_config",
    "save_model",
]
