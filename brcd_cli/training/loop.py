"""The training loop shared by teachers and students.

Epochs over a preloaded uint8 image tensor, two random views per image per
step, Adam on the trainable parameters, validation mAP after each epoch with
early stopping (the best weights are kept), an optional wall-clock budget, and
a resume file so that an interrupted run continues where it stopped.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..data import Augmenter
from .. import distributed
from ..atomic import atomic_write
from ..errors import BrcdError
from ..models import HashModel
from ..options import at_least, positive
from ..progress import Progress

RESUME_FILE = "resume.pt"

StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
ValidateFn = Callable[[HashModel], float]


@dataclass
class FitOptions:
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    patience: int = 10  # epochs without a better validation mAP before stopping
    time_budget: Optional[float] = None  # seconds of training, None = no limit
    seed: int = 0
    save_every: float = 30.0  # seconds between resume-file writes

    def __post_init__(self) -> None:
        at_least("epochs", self.epochs, 1)
        at_least("batch_size", self.batch_size, 2)
        positive("lr", self.lr)
        at_least("patience", self.patience, 1)
        positive("time_budget", self.time_budget, optional=True)
        at_least("save_every", self.save_every, 0)


@dataclass
class FitResult:
    best_score: float
    best_epoch: int
    epochs: int
    seconds: float
    stopped: str  # "epochs", "early-stop", "time-budget"
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _save_resume(path: Path, payload: dict) -> None:
    with atomic_write(path) as fh:
        torch.save(payload, fh)


def _load_resume(path: Path) -> dict:
    try:
        # weights_only: a resume file holds tensors and plain containers; nothing else is unpickled
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise BrcdError(f"cannot resume from {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


class Interrupted(BrcdError):
    """Ctrl-C during training: the state is saved and the run can be resumed."""

    exit_code = 130


@dataclass
class _State:
    """Everything a resumed run needs besides the model and optimizer."""

    epoch: int = 0
    elapsed: float = 0.0
    bad_epochs: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    best_state: dict = field(default_factory=dict)
    history: list = field(default_factory=list)


def fit(
    model: HashModel,
    step: StepFn,
    images: torch.Tensor,
    augmenter: Augmenter,
    options: FitOptions,
    out_dir: Path,
    validate: Optional[ValidateFn] = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train ``model`` in place with ``step(indices, view1, view2) -> loss``; leaves the best weights loaded.

    Ctrl-C saves the state of the last finished epoch and raises :class:`Interrupted`.
    """
    world = distributed.current()
    n = images.shape[0]
    batch = min(options.batch_size, n)
    if batch < 2:
        raise BrcdError("training needs at least 2 images")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise BrcdError("the model has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=options.lr)
    resume_path = Path(out_dir) / RESUME_FILE
    st = _State()
    if resume and resume_path.is_file():
        saved = _load_resume(resume_path)
        model.load_state_dict(saved.pop("model"))
        optimizer.load_state_dict(saved.pop("optimizer"))
        st = _State(**saved)
        log(f"resuming from {resume_path} after epoch {st.epoch}")
    elif resume:
        log(f"nothing to resume in {out_dir}; starting afresh")

    def save() -> None:
        if world.is_main:  # every rank holds the same state; one writer is enough
            _save_resume(resume_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), **asdict(st)})

    parallel = None
    if world.distributed:
        from .data_parallel import ShardedForward

        parallel = ShardedForward(model, world)
        log(f"data-parallel training on {world.size} processes; global batch {batch}, "
            f"about {batch // world.size} images per process per step")

    def run_step(idx: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        if parallel is None:
            return step(idx, v1, v2)
        with model.data_parallel(parallel):
            return step(idx, v1, v2)

    def out_of_time(spent: float) -> bool:
        over = options.time_budget is not None and spent >= options.time_budget
        return distributed.any_rank(world, over) if options.time_budget is not None else False

    stopped = "epochs"
    last_save = time.monotonic()
    label = "val mAP" if validate is not None else "-loss"
    try:
        while st.epoch < options.epochs:
            if out_of_time(st.elapsed):
                stopped = "time-budget"
                break
            model.train()
            t0 = time.monotonic()
            gen = torch.Generator().manual_seed(options.seed * 100_003 + st.epoch)
            order = torch.randperm(n, generator=gen)
            total, steps = 0.0, 0
            with Progress(f"epoch {st.epoch + 1}", total=(n // batch) * batch, log=log) as progress:
                for start in range(0, n - batch + 1, batch):
                    idx = order[start : start + batch]
                    x = images[idx].float().div_(255.0)
                    loss = run_step(idx, augmenter(x, gen), augmenter(x, gen))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach())
                    steps += 1
                    progress.advance(batch)
                    if out_of_time(st.elapsed + time.monotonic() - t0):
                        stopped = "time-budget"
                        break
            mean_loss = total / max(steps, 1)
            if validate is not None:  # rank 0 validates; all ranks take its score, so they stop together
                score = distributed.broadcast(world, validate(model) if world.is_main else 0.0)
            else:
                score = -mean_loss
            st.elapsed += time.monotonic() - t0
            st.epoch += 1
            st.history.append({"epoch": st.epoch, "loss": mean_loss, "score": score, "seconds": st.elapsed})
            improved = score > st.best_score
            if improved:
                st.best_score, st.best_epoch, st.bad_epochs = score, st.epoch, 0
                st.best_state = copy.deepcopy(model.state_dict())
            else:
                st.bad_epochs += 1
            log(f"epoch {st.epoch}: loss {mean_loss:.4f}  {label} {score:.4f}{'  *' if improved else ''}  ({st.elapsed:.0f}s)")
            if distributed.broadcast(world, time.monotonic() - last_save >= options.save_every):
                save()
                last_save = time.monotonic()
            if stopped == "time-budget":
                break
            if validate is not None and st.bad_epochs >= options.patience:
                stopped = "early-stop"
                break
    except KeyboardInterrupt:
        save()
        raise Interrupted(f"interrupted; state after epoch {st.epoch} saved in {resume_path}: rerun with --resume to continue") from None
    save()
    if st.best_state:
        model.load_state_dict(st.best_state)
    model.eval()
    return FitResult(
        best_score=st.best_score,
        best_epoch=st.best_epoch,
        epochs=st.epoch,
        seconds=st.elapsed,
        stopped=stopped,
        history=st.history,
    )
