"""The registry of distillation methods: a method is one loss module that registers itself.

A method says, once, beside its maths (as timm's ``register_model`` and
torchdistill's loss registry do):

    name              what --method and the experiment grid call it
    weight            the published weight of its term against the student's CIBHash loss
    needs             the tensors its term reads (see :data:`INPUTS`); the trainer computes only those
    keeps_code_space  whether the student stays in the teacher's code space (ASHP: it can search
                      teacher-encoded databases), recorded in the student's checkpoint
    variants          ablations: named option changes the experiment grid runs beside it

and gives a builder that makes its term from a :class:`MethodContext`. The
trainer (``training/distill.py``), the experiment grid and the CLI's
``--method`` read this registry; adding a method is one new file in
``brcd_cli/losses/`` with a ``@register_method`` builder (found by
:func:`load_methods`), or a module of the user's own package named by a
``brcd.methods`` entry point.

Listing the methods imports every loss module, and so torch: the CLI pays
that (about a second) when it builds its ``--method`` choices.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from ..errors import OptionError

if TYPE_CHECKING:
    import torch
    from torch import nn

# What a term may read. Rows of both views are stacked ([view 1; view 2], 2B rows) where a tensor has 2B rows.
INPUTS = {
    "teacher": "the frozen teacher's outputs at all (a method without it trains the student alone)",
    "logits": "student and teacher logits before the sign, 2B rows",
    "codes": "per view: the student's straight-through codes and the teacher's +-1 codes, B rows each",
    "hidden": "the inputs of the student's and teacher's hash layers (FitNet's hint), 2B rows",
    "clusters": "k-means clusters of the teacher's training codes and their bit masks",
}


@dataclass
class MethodContext:
    """What a term is built from: the options, the widths of the hash layers' inputs, clusters and masks when needed."""

    options: Any  # DistillOptions
    student_dim: int = 0
    teacher_dim: int = 0
    clusters: Optional[torch.Tensor] = None  # (n_train,) cluster of each training image
    centres: Optional[torch.Tensor] = None
    masks: Optional[torch.Tensor] = None


@dataclass
class DistillBatch:
    """One step's tensors, as :data:`INPUTS` describes them; what a method does not need is None."""

    idx: torch.Tensor
    s_logits: torch.Tensor
    s_codes: tuple[torch.Tensor, torch.Tensor]
    t_logits: Optional[torch.Tensor] = None
    t_codes: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    s_hidden: Optional[torch.Tensor] = None
    t_hidden: Optional[torch.Tensor] = None


@dataclass
class Term:
    """A method's distillation term; ``trainable`` holds parameters trained with the student (FitNet's regressor)."""

    loss: Callable[[DistillBatch], torch.Tensor]
    trainable: Optional[nn.Module] = None

    def __call__(self, batch: DistillBatch) -> torch.Tensor:
        return self.loss(batch)


@dataclass(frozen=True)
class Method:
    """One registered distillation method (see the module docstring)."""

    name: str
    weight: float
    needs: frozenset[str]
    keeps_code_space: bool
    summary: str
    build: Callable[[MethodContext], Optional[Term]]
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def distills(self) -> bool:
        """Whether the method learns from the teacher at all (``none`` does not)."""
        return "teacher" in self.needs


ENTRY_POINT_GROUP = "brcd.methods"
_methods: dict[str, Method] = {}
_lock = threading.Lock()
_loaded = False


def register_method(name: str, *, weight: float, needs: tuple[str, ...] = (), keeps_code_space: bool, summary: str,
                    variants: Optional[Mapping[str, Mapping[str, Any]]] = None):
    """Decorator for a builder ``(MethodContext) -> Term | None``: registers the method under ``name``.

    Any need but "clusters" implies "teacher". Registering a name twice is a
    mistake (two files claiming one method) and raises.
    """
    unknown = set(needs) - set(INPUTS)
    if unknown:
        raise ValueError(f"method {name!r} needs unknown inputs {sorted(unknown)}; known: {', '.join(INPUTS)}")
    all_needs = frozenset(needs) | ({"teacher"} if needs else frozenset())

    def decorate(build: Callable[[MethodContext], Optional[Term]]) -> Callable[[MethodContext], Optional[Term]]:
        with _lock:
            taken = set(_methods) | {v for m in _methods.values() for v in m.variants}
            clash = ({name} | set(variants or {})) & taken
            if clash:
                raise ValueError(f"distillation method name(s) {sorted(clash)} already registered")
            _methods[name] = Method(name, float(weight), all_needs, keeps_code_space, summary, build, dict(variants or {}))
        return build

    return decorate


def unregister_method(name: str) -> None:
    """Remove a method (for tests and plugins that register one temporarily)."""
    with _lock:
        _methods.pop(name, None)


def load_methods() -> None:
    """Import every module of ``brcd_cli.losses`` once, so each registers its method.

    The built-in modules come first, in the order ``brcd_cli.losses`` imports
    them (the order of the report's rows); a new file is found by name, and
    an installed package's method through its ``brcd.methods`` entry point
    (a module that calls :func:`register_method` when imported).
    """
    global _loaded
    if _loaded:
        return
    package = importlib.import_module("brcd_cli.losses")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):  # methods of installed packages
        entry.load()
    _loaded = True


def methods() -> dict[str, Method]:
    """Every registered method by name, in registration order."""
    load_methods()
    return dict(_methods)


def method_names() -> list[str]:
    return list(methods())


def get_method(name: str) -> Method:
    """The method called ``name``; an unknown name is an option error that lists the choices."""
    found = methods().get(name)
    if found is None:
        raise OptionError("method", f"must be one of {', '.join(method_names())}, got {name!r}")
    return found


def variants() -> dict[str, dict[str, Any]]:
    """Every row the experiment grid can run: the floor (methods that learn nothing from the teacher) first,
    then each method as published, then each method's ablations, so a report reads from the floor up.

    Values are DistillOptions changes (always including ``method``).
    """
    ordered = sorted(methods().values(), key=lambda m: m.distills)  # stable: registration order otherwise
    table = {m.name: {"method": m.name} for m in ordered}
    for m in methods().values():
        for variant, changes in m.variants.items():
            table[variant] = {"method": m.name, **changes}
    return table


def ablations() -> list[str]:
    """The ablation rows, in order."""
    return [v for m in methods().values() for v in m.variants]


def per_view(loss: Callable[[Any, Any], torch.Tensor]) -> Term:
    """A term that compares rows within one view's batch (relational and contrastive losses), averaged over both views."""

    def term(b: DistillBatch) -> torch.Tensor:
        (s1, s2), (t1, t2) = b.s_codes, b.t_codes
        return 0.5 * (loss(s1, t1) + loss(s2, t2))

    return Term(term)
