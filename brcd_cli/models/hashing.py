"""Hashing networks: a timm backbone, a head to L logits, and the sign code.

The model takes float images in [0, 1] and normalises them itself, so every
caller (training, encode, search) feeds the same thing and the statistics
travel with the checkpoint.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from ..errors import ModelError, OptionError
from ..options import HEADS, IMAGE_SIZES, VALID_BITS, one_of, within


@dataclass
class ModelConfig:
    """Everything needed to rebuild a hashing model (stored as config.json beside the weights)."""

    arch: str
    bits: int
    image_size: int
    role: str = "teacher"  # teacher | student
    head: str = "linear"  # linear: Linear(d, L); mlp: Linear(d, h) -> ReLU -> Linear(h, L)
    hidden: int = 1000
    freeze_backbone: bool = False
    pretrained: str = "none"  # what initialised the backbone, for the record
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    augment: str = "photo"
    method: str = "cibhash"  # cibhash (teacher or student alone) | brcd
    code_space: str = ""  # fingerprint of the model whose code space this one uses ("" = its own)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ModelError(f"config has unknown fields {sorted(unknown)}: written by a newer brcd?")
        try:
            cfg = cls(**d)
            cfg.mean, cfg.std = tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
            cfg.bits, cfg.image_size, cfg.hidden = int(cfg.bits), int(cfg.image_size), int(cfg.hidden)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"config is malformed: {exc}") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """The same rules as the training options; a config that breaks them is a damaged checkpoint (ModelError)."""
        try:
            one_of("bits", self.bits, VALID_BITS)
            one_of("head", self.head, HEADS)
            within("image size", self.image_size, *IMAGE_SIZES)
            one_of("role", self.role, ("teacher", "student"))
        except OptionError as exc:
            raise ModelError(str(exc)) from None


def create_backbone(arch: str, image_size: int) -> nn.Module:
    """A timm model without its classifier (pooled features out), or a clear error for a bad name."""
    import timm  # here, not at the top: encoding a query from a saved program never needs it (models/export.py)

    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ModelError(f"unknown architecture {arch!r}{hint}")
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    if _takes_img_size(arch):
        kwargs["img_size"] = image_size
    try:
        return timm.create_model(arch, **kwargs)
    except Exception as exc:  # noqa: BLE001 - timm raises many types for bad combinations
        raise ModelError(f"cannot build {arch!r} at {image_size}px: {exc}") from None


def _takes_img_size(arch: str) -> bool:
    """Transformers fix their position embeddings to an input size; CNNs take any size."""
    import timm

    cfg = timm.get_pretrained_cfg(arch)
    arch_name = arch.split(".")[0]
    return any(t in arch_name for t in ("vit", "deit", "beit", "eva", "swin", "maxvit", "coat", "mambaout")) or (
        cfg is not None and getattr(cfg, "fixed_input_size", False)
    )


@torch.no_grad()
def feature_dim(backbone: nn.Module, image_size: int) -> int:
    """Width of the pooled features. Read off one forward pass, because some timm models
    (LCNet, MobileNetV3) add a conv head after pooling, so num_features is not what comes out."""
    was_training = backbone.training
    backbone.eval()
    try:
        return int(backbone(torch.zeros(1, 3, image_size, image_size)).shape[-1])
    finally:
        backbone.train(was_training)


def sign_codes(logits: torch.Tensor) -> torch.Tensor:
    """The code of logits h: sign(h) in {-1, +1}, with 0 mapping to +1 (sigmoid(h) >= 0.5), wherever codes are made."""
    return torch.where(logits >= 0, 1.0, -1.0)


class HashModel(nn.Module):
    """Backbone + head; ``forward`` gives logits h, ``codes`` gives sign(h) in {-1, +1}.

    A frozen backbone is kept in eval mode even while the head trains: its
    BatchNorm statistics must not drift and its dropout must not run.
    """

    def __init__(self, config: ModelConfig, backbone: Optional[nn.Module] = None) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.backbone = backbone if backbone is not None else create_backbone(config.arch, config.image_size)
        dim = feature_dim(self.backbone, config.image_size)
        if config.head == "linear":
            self.head: nn.Module = nn.Linear(dim, config.bits)
        else:
            self.head = nn.Sequential(nn.Linear(dim, config.hidden), nn.ReLU(inplace=True), nn.Linear(config.hidden, config.bits))
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)
        self.set_backbone_frozen(config.freeze_backbone)

    def set_backbone_frozen(self, frozen: bool) -> None:
        self.config.freeze_backbone = frozen
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            self.backbone.eval()

    def train(self, mode: bool = True) -> "HashModel":
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features of float images in [0, 1]."""
        return self.backbone((images - self.mean) / self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits h of float images in [0, 1].

        While a data-parallel forward is installed (multi-process training,
        see :meth:`data_parallel`), each process computes only its share of
        the rows and the logits of the whole batch come back, so losses need
        no change to see every process's negatives.
        """
        parallel = self.__dict__.get("_parallel_forward")
        if parallel is not None:
            return parallel(images)
        return self.local_forward(images)

    @contextmanager
    def data_parallel(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Route ``forward`` through ``forward`` (e.g. a sharded DistributedDataParallel call) for a block.

        Kept out of the module tree on purpose (``__dict__``), so it never
        appears in ``state_dict`` or ``parameters``.
        """
        self.__dict__["_parallel_forward"] = forward
        try:
            yield
        finally:
            self.__dict__.pop("_parallel_forward", None)

    def local_forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of exactly these images in this process."""
        if self.config.freeze_backbone:
            with torch.no_grad():
                feats = self.features(images)
        else:
            feats = self.features(images)
        return self.head(feats)

    def prepare_for_inference(self) -> "HashModel":
        """Evaluation mode with channels-last weights and inputs, the layout oneDNN's CPU convolutions prefer.

        Depthwise convolutions (MobileNet-like students) run several times
        faster this way on a CPU (6x for MobileNetV3-Small at 32 px here),
        while dense ones (ResNet) are unchanged; the logits differ from the
        default layout only by float rounding (about 1e-6). Every command
        that loads a model to encode does this, so codes come from one path.
        """
        self.eval()
        self.to(memory_format=torch.channels_last)
        self.__dict__["_channels_last"] = True
        return self

    @torch.no_grad()
    def codes(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic ±1 codes (sign of the logits, i.e. sigmoid(h) >= 0.5; 0 maps to +1)."""
        if self.__dict__.get("_channels_last") and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return sign_codes(self.forward(images))


def digest_tensor(h: "hashlib._Hash", t: torch.Tensor) -> None:
    """Feed a tensor's shape, dtype and bytes to a hash: equal digests mean equal tensors."""
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.detach().contiguous().cpu().numpy().tobytes())


def backbone_digest(model: HashModel) -> str:
    """sha256 of a backbone's weights and buffers: what a cached feature depends on besides its input."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.backbone.state_dict().items()):
        h.update(name.encode())
        digest_tensor(h, tensor)
    return h.hexdigest()
