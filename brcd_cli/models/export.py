"""An inference program saved beside each checkpoint, so encoding a query needs neither timm nor its model code.

Building a model through timm costs more than a second of imports on a small
machine (timm pulls in torchvision and torch's compiler stack) before a single
weight is read, and a one-query ``brcd search`` pays it every time. When a
model is saved, its inference forward (normalisation, backbone, head, in the
channels-last layout encoding uses) is traced to TorchScript and written
beside the weights as ``model.ts``; its sha256 and the weights' fingerprint go
into ``config.json`` with a digest of the config it was traced from. Encoding
commands load that program when it is there and both still match; otherwise (an older checkpoint, a model that does not trace, a
torch without TorchScript) they build the model through timm as before.

The trace is checked when it is made: it must give the eager model's codes
exactly on inputs of other batch sizes than the one it was traced with, or
it is not saved. Like the weights, the program is loaded only from the model
folder the user names; TorchScript runs only its own operators, never Python.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol

import torch
from torch import nn

from ..atomic import atomic_write_bytes
from .hashing import HashModel, ModelConfig, sign_codes

EXPORT = "model.ts"
FORMAT = "torchscript"
_CHECK_BATCHES = (1, 3)


class Encoder(Protocol):
    """What encoding needs of a model: its config and deterministic codes of float images in [0, 1]."""

    config: ModelConfig

    def codes(self, images: torch.Tensor) -> torch.Tensor: ...

    def eval(self) -> Any: ...


@contextmanager
def _quiet() -> Iterator[None]:
    """TorchScript warns that it is deprecated in favour of torch.export, whose loader costs what timm does."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


class _Logits(nn.Module):
    """The inference forward of a hashing model: logits of float images in [0, 1], this process only."""

    def __init__(self, model: HashModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.local_forward(images)


def _inputs(config: ModelConfig, batch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch)
    size = config.image_size
    return torch.rand(batch, 3, size, size, generator=generator).contiguous(memory_format=torch.channels_last)


def export_inference(model: HashModel, directory: Path) -> Optional[dict[str, str]]:
    """Trace ``model``'s inference forward into ``directory/model.ts``; the record for config.json, or None.

    The model itself is left as it was (a copy is traced). None when the trace
    fails or disagrees with the eager model: encoding then builds the model.
    """
    try:
        eager = copy.deepcopy(model).cpu().prepare_for_inference()
        with _quiet(), torch.no_grad():
            program = torch.jit.trace(_Logits(eager).eval(), _inputs(eager.config, 2), check_trace=False)
            for batch in _CHECK_BATCHES:
                x = _inputs(eager.config, batch)
                if not torch.equal(program(x) >= 0, eager.local_forward(x) >= 0):
                    return None
            buffer = io.BytesIO()
            torch.jit.save(program, buffer)
    except Exception:  # noqa: BLE001 - any model that does not trace keeps the timm path
        return None
    data = buffer.getvalue()
    atomic_write_bytes(Path(directory) / EXPORT, data)
    return {"file": EXPORT, "format": FORMAT, "sha256": hashlib.sha256(data).hexdigest(),
            "config_sha256": config_digest(model.config), "torch": torch.__version__}


def config_digest(config: ModelConfig) -> str:
    """What ties a program to the config it was traced from: an edited config must not run an old program."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()


class ExportedModel:
    """A saved inference program with its model's config: encodes like the :class:`HashModel` it came from."""

    def __init__(self, config: ModelConfig, program: Any) -> None:
        self.config = config
        self.program = program

    def eval(self) -> ExportedModel:
        return self

    @torch.no_grad()
    def codes(self, images: torch.Tensor) -> torch.Tensor:
        """±1 codes, as :meth:`HashModel.codes` gives them (channels-last input, 0 maps to +1)."""
        if images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return sign_codes(self.program(images))


def load_exported(directory: Path, config: ModelConfig, record: Any) -> Optional[ExportedModel]:
    """The program beside a checkpoint when config.json records one and the file matches it; else None."""
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("file") != EXPORT:
        return None
    if record.get("config_sha256") != config_digest(config):
        return None
    path = Path(directory) / EXPORT
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != record.get("sha256"):
        return None
    try:
        with _quiet():
            program = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception:  # noqa: BLE001 - a program this torch cannot read: build the model instead
        return None
    program.eval()
    return ExportedModel(config, program)
