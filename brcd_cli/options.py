"""What option values may be, said once: the choices and the range checks the option dataclasses run on themselves.

Every options dataclass (``FitOptions``, ``TeacherOptions``, ``DistillOptions``)
checks its own fields when it is made (``__post_init__``) with these helpers,
which raise :class:`~brcd_cli.errors.OptionError` naming the field; a Python
caller reads ``epochs >= 1 is required``, the CLI ``--epochs >= 1 is required``
(it maps fields to flags in one table). The enumerated choices live here, not
in the modules that implement them, so the CLI can offer them as ``--help``
choices without importing torch or timm.
"""
from __future__ import annotations

from enum import Enum
from typing import Any, Iterable, Optional, Sequence

from .errors import OptionError

VALID_BITS = (8, 16, 24, 32, 48, 64, 96, 128, 256)
HEADS = ("linear", "mlp")  # built by brcd_cli.models.hashing
TEACHER_METHODS = ("cibhash", "lsh", "itq")  # brcd_cli.training.teacher: the learned teacher and two closed-form floors
DEMO_DATA = ("photos", "digits")  # brcd_cli.demo.SETTINGS
AUGMENT_RECIPES = ("photo", "digits", "none")  # implemented by brcd_cli.data.augment
MASK_RULES = ("consistent", "opposite")  # implemented by brcd_cli.training.clustering
IMAGE_SIZES = (8, 1024)


def one_of(field: str, value: Any, choices: Sequence[Any], optional: bool = False) -> None:
    """``value`` is one of ``choices`` (or None when ``optional``)."""
    if (value is None and optional) or value in choices:
        return
    raise OptionError(field, f"must be one of {', '.join(map(str, choices))}, got {value!r}")


def at_least(field: str, value: Optional[float], low: float, optional: bool = False) -> None:
    """``value >= low`` (or None when ``optional``)."""
    if (value is None and optional) or (value is not None and value >= low):
        return
    raise OptionError(field, f">= {low:g} is required, got {value}")


def positive(field: str, value: Optional[float], optional: bool = False) -> None:
    """``value > 0`` (or None when ``optional``)."""
    if (value is None and optional) or (value is not None and value > 0):
        return
    raise OptionError(field, f"must be positive, got {value}")


def within(field: str, value: Optional[float], low: float, high: float, optional: bool = False) -> None:
    """``low <= value <= high`` (or None when ``optional``)."""
    if (value is None and optional) or (value is not None and low <= value <= high):
        return
    raise OptionError(field, f"must be in {low:g}..{high:g}, got {value}")


def choice_enum(name: str, choices: Iterable[str]) -> type[Enum]:
    """A str Enum of the choices, for a typer option that click checks and --help lists."""
    return Enum(name, {c.replace("-", "_"): c for c in choices}, type=str)  # type: ignore[return-value]


def value_of(choice: Any) -> Any:
    """The plain value of an Enum choice (and anything else unchanged)."""
    return choice.value if isinstance(choice, Enum) else choice


def check_model_options(bits: Optional[int], image_size: Optional[int], head: str, hidden: int,
                        augment: Optional[str]) -> None:
    """The options every hashing model is built from, as teacher and student options share them.

    None means "taken from elsewhere" (a student's bits and, by default, its
    image size and augmentation are its teacher's), so there is nothing to check.
    """
    one_of("bits", bits, VALID_BITS, optional=True)
    within("image_size", image_size, *IMAGE_SIZES, optional=True)
    one_of("head", head, HEADS)
    at_least("hidden", hidden, 1)
    one_of("augment", augment, AUGMENT_RECIPES, optional=True)
