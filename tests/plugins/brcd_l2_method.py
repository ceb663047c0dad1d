"""A distillation method from outside brcd: mean squared error between student and teacher codes, per view.

Registered through the ``brcd.methods`` entry point of a package (the tests
make one) or by importing this module.
"""
from __future__ import annotations

import torch.nn.functional as F

from brcd_cli.losses.registry import MethodContext, Term, per_view, register_method


@register_method("l2codes", weight=0.5, needs=("codes",), keeps_code_space=True,
                 summary="mean squared error between student and teacher codes (a plugin)",
                 variants={"l2codes-heavy": {"weight": 5.0}})
def l2_term(ctx: MethodContext) -> Term:
    return per_view(lambda s, t: F.mse_loss(s, t.detach()))
