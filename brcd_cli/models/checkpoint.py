"""Checkpoints: safetensors weights + a JSON config, never a pickled module.

A checkpoint is a folder holding ``model.safetensors`` and ``config.json``.
The config records the model's fingerprint (sha256 of the weights file), so
codes files can name the model that produced them and refuse a model from
another code space. Beside them, ``model.ts`` holds the traced inference
program that :func:`load_encoder` runs without building the model through
timm (:mod:`brcd_cli.models.export`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..atomic import atomic_write_bytes, atomic_write_json
from ..errors import ModelError
from . import perceptual
from .export import Encoder, export_inference, load_exported
from .hashing import HashModel, ModelConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "brcd-model/1"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(model: HashModel, directory: Path) -> str:
    """Save weights and config; returns the fingerprint. Writes weights first, config last,
    so a folder whose config is present always has the matching weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Serialised in memory rather than by save_file, which renames its own unsynced temp file into place.
    data = save(state, metadata={"format": FORMAT})
    atomic_write_bytes(directory / WEIGHTS, data)
    fingerprint = hashlib.sha256(data).hexdigest()
    doc = {"format": FORMAT, "fingerprint": fingerprint, "config": model.config.to_dict()}
    exported = export_inference(model, directory)
    if exported is not None:
        doc["export"] = exported
    atomic_write_json(directory / CONFIG, doc)
    return fingerprint


def read_config(directory: Path) -> tuple[ModelConfig, str]:
    """The config and fingerprint of a checkpoint folder (or a built-in perceptual hasher), without loading weights."""
    hasher = perceptual.resolve(directory)
    if hasher is not None:
        return hasher.config, hasher.fingerprint
    config, fingerprint, _ = _read_doc(directory)
    return config, fingerprint


def _read_doc(directory: Path) -> tuple[ModelConfig, str, dict]:
    """The config, the fingerprint and the whole config.json document of a checkpoint folder."""
    directory = Path(directory)
    cfg_path = directory / CONFIG
    if not directory.is_dir():
        raise ModelError(f"model folder not found: {directory}")
    if not cfg_path.is_file():
        raise ModelError(f"{directory} is not a brcd model (no {CONFIG}); train one with brcd train-teacher or brcd distill")
    try:
        doc = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("config"), dict):
        raise ModelError(f"{cfg_path} is not a {FORMAT} config")
    return ModelConfig.from_dict(doc["config"]), str(doc.get("fingerprint", "")), doc


def _checked_weights(directory: Path, fingerprint: str) -> Path:
    """The weights file, refused by name when it is missing or does not match the recorded fingerprint."""
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{directory} has a config but no {WEIGHTS}")
    if fingerprint and _sha256(weights) != fingerprint:
        raise ModelError(f"{weights} does not match the fingerprint in {CONFIG} (file changed or corrupt)")
    return weights


def load_encoder(directory: Path) -> tuple[Encoder, str]:
    """A model to encode with: the saved inference program when there is a matching one, else the rebuilt model.

    Both give the same codes (the program is checked against the model when it
    is saved); the program skips importing timm and building the network.
    ``perceptual:<name>`` is a built-in perceptual hasher (:mod:`.perceptual`) instead of a folder.
    """
    hasher = perceptual.resolve(directory)
    if hasher is not None:
        return hasher, hasher.fingerprint
    directory = Path(directory)
    config, fingerprint, doc = _read_doc(directory)
    _checked_weights(directory, fingerprint)
    exported = load_exported(directory, config, doc.get("export"))
    if exported is not None:
        return exported, fingerprint
    return load_model(directory)


def load_model(directory: Path, expect_role: str | None = None) -> tuple[HashModel, str]:
    """Rebuild a model from its folder. Refuses a tampered or mismatched weights file by name."""
    directory = Path(directory)
    config, fingerprint = read_config(directory)
    if expect_role is not None and config.role != expect_role:
        raise ModelError(f"{directory} holds a {config.role}, expected a {expect_role}")
    weights = _checked_weights(directory, fingerprint)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{weights} is not a valid safetensors file: {exc}") from None
    model = HashModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)} vs {config.arch} {tuple(expected[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        raise ModelError(f"{weights} does not fit {config.arch} with {config.bits} bits: {'; '.join(parts)}")
    model.load_state_dict(state)
    model.prepare_for_inference()
    return model, fingerprint


def code_space_of(config: ModelConfig, fingerprint: str) -> str:
    """The code space a model encodes into: its teacher's for a distilled student, else its own."""
    return config.code_space or fingerprint
