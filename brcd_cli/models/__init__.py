"""Hashing models, checkpoints and pretrained weights."""
from .checkpoint import code_space_of, load_encoder, load_model, read_config, save_model
from .export import Encoder, ExportedModel
from .hashing import HashModel, ModelConfig, VALID_BITS, backbone_digest, create_backbone, sign_codes
from .pretrained import cached_weights, load_backbone_weights

__all__ = [
    "Encoder",
    "ExportedModel",
    "HashModel",
    "ModelConfig",
    "VALID_BITS",
    "backbone_digest",
    "cached_weights",
    "code_space_of",
    "create_backbone",
    "load_backbone_weights",
    "load_encoder",
    "load_model",
    "read_config",
    "save_model",
    "sign_codes",
]
