"""The method registry: what the trainer, the experiment grid and the CLI read, and a method added from outside."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brcd_cli.errors import OptionError
from brcd_cli.experiment import parse_methods
from brcd_cli.losses import registry
from conftest import TINY_ARCH

PLUGINS = Path(__file__).parent / "plugins"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def plugin_method():
    """The plugin's method registered for one test, and gone after it."""
    sys.path.insert(0, str(PLUGINS))
    try:
        module = importlib.import_module("brcd_l2_method")
        if "l2codes" not in registry.methods():  # imported by an earlier test, then unregistered
            importlib.reload(module)
        yield registry.get_method("l2codes")
    finally:
        registry.unregister_method("l2codes")
        sys.path.remove(str(PLUGINS))


def test_built_in_methods_and_their_published_weights() -> None:
    found = registry.methods()
    assert list(found) == ["brcd", "none", "kd", "fitnet", "rkd", "pkt", "sp", "crd"]
    assert {n: m.weight for n, m in found.items()} == {"brcd": 1.0, "none": 0.0, "kd": 1.0, "fitnet": 100.0, "rkd": 1.0,
                                                       "pkt": 1.0, "sp": 3000.0, "crd": 0.8}
    assert not found["none"].distills and not found["none"].keeps_code_space
    assert all(m.distills and m.keeps_code_space for n, m in found.items() if n != "none")
    assert "hidden" in found["fitnet"].needs and "clusters" in found["brcd"].needs
    assert registry.ablations() == ["brcd-no-fn", "brcd-no-fp", "brcd-no-mask", "brcd-opposite-mask"]
    assert registry.variants()["brcd-opposite-mask"] == {"method": "brcd", "mask_rule": "opposite"}
    with pytest.raises(OptionError, match="method must be one of brcd, none"):
        registry.get_method("sskd")


def test_a_name_cannot_be_registered_twice_nor_need_unknown_inputs() -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register_method("kd", weight=1, keeps_code_space=True, summary="again")(lambda ctx: None)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_method("mine", weight=1, keeps_code_space=True, summary="x",
                                 variants={"brcd-no-fn": {}})(lambda ctx: None)
    assert "mine" not in registry.methods()
    with pytest.raises(ValueError, match="unknown inputs"):
        registry.register_method("mine", weight=1, needs=("pixels",), keeps_code_space=True, summary="x")


def test_a_registered_method_trains_and_joins_the_grid(plugin_method, tmp_path: Path) -> None:
    from brcd_cli.data import synthetic_source
    from brcd_cli.training import DistillOptions, FitOptions, TeacherOptions, distill, train_teacher

    assert plugin_method.weight == 0.5 and plugin_method.needs == {"codes", "teacher"}
    assert parse_methods("all")[-1] == "l2codes-heavy" and "l2codes" in parse_methods("baselines")
    assert registry.variants()["l2codes-heavy"] == {"method": "l2codes", "weight": 5.0}
    source = synthetic_source(n=48)
    teacher = train_teacher(source, tmp_path / "t", TeacherOptions(arch=TINY_ARCH, bits=16, image_size=16, pretrained="none",
                                                                   fit=FitOptions(epochs=1, batch_size=16)), log=lambda _: None)
    trained = distill(source, tmp_path / "t", tmp_path / "s",
                      DistillOptions(arch=TINY_ARCH, pretrained="none", method="l2codes", hidden=32,
                                     fit=FitOptions(epochs=2, batch_size=16)), log=lambda _: None)
    assert trained.model.config.method == "l2codes" and trained.model.config.code_space == teacher.fingerprint
    assert all(np.isfinite(row["loss"]) for row in trained.result.history)


def _installed_plugin(root: Path) -> dict[str, str]:
    """An environment in which a package declares the plugin through the brcd.methods entry point."""
    info = root / "brcd_l2_method-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brcd-l2-method\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[brcd.methods]\nl2codes = brcd_l2_method\n")
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(PLUGINS), str(REPO)])}


def test_an_installed_method_appears_in_the_cli_choices(tmp_path: Path) -> None:
    env = _installed_plugin(tmp_path / "site")

    def brcd(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "brcd_cli", *args], env=env, capture_output=True, text=True, timeout=120)

    shown = brcd("distill", "--help")
    assert shown.returncode == 0 and "<brcd|none|kd|fitnet|rkd|pkt|sp|crd|l2codes>" in shown.stdout
    listed = brcd("methods")
    assert listed.returncode == 0 and "(a plugin)" in listed.stdout and "ablation l2codes-heavy: weight=5.0" in listed.stdout
    table = json.loads(brcd("methods", "--json").stdout)
    assert [m["name"] for m in table["methods"]][-1] == "l2codes" and table["rows"]["l2codes-heavy"]["weight"] == 5.0
    accepted = brcd("distill", "synthetic:8", "--teacher", str(tmp_path / "missing"), "--method", "l2codes")
    assert accepted.returncode == 4 and "model folder not found" in accepted.stderr  # past the choice check
    refused = brcd("distill", "synthetic:8", "--teacher", str(tmp_path / "missing"), "--method", "l3codes")
    assert refused.returncode == 2 and "'l2codes'" in refused.stderr and "Invalid value for '--method'" in refused.stderr
