"""The CLI's enumerated option types: click rejects other values (exit 2) and --help lists the choices.

The choices come from their owners (:mod:`brcd_cli.options`, the method
registry). ``Method`` is made on first use, when typer builds a command that
takes ``--method``: listing the registered methods imports every loss module,
and so torch, which the other commands do not need.
"""
from __future__ import annotations

from enum import Enum
from typing import Any

from .options import AUGMENT_RECIPES, HEADS, MASK_RULES, TEACHER_METHODS, DEMO_DATA, choice_enum

Head = choice_enum("Head", HEADS)
Augment = choice_enum("Augment", AUGMENT_RECIPES)
MaskRule = choice_enum("MaskRule", MASK_RULES)
TeacherMethod = choice_enum("TeacherMethod", TEACHER_METHODS)
DemoData = choice_enum("DemoData", DEMO_DATA)
Device = choice_enum("Device", ("cpu", "cuda"))
GpuDevice = choice_enum("GpuDevice", ("cuda",))


def __getattr__(name: str) -> Any:
    if name == "Method":
        from .losses.registry import method_names

        method: type[Enum] = choice_enum("Method", method_names())  # every registered distillation method
        globals()["Method"] = method
        return method
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
