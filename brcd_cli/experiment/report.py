"""The experiment's report: results.csv, results.md and PNG plots, all from the finished cells.

results.md gives mean +- std over seeds of test mAP for ASHP (student
queries, teacher database) and SSHP (student on both sides) per bit length,
with the teacher-teacher figure as the bound and the best student per column
in bold; then, computed rather than written by hand, where BRCD ranks against
each method in each column and what each ablation changes. A student trained
alone has its own code space, so it has no ASHP figure.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..atomic import atomic_write, atomic_write_text
from ..evaluation import precision_recall_curve
from ..losses.registry import ablations, variants
from .cells import CODES_FILE, STATE_FILE, load_codes

PARADIGMS = (("ashp", "ASHP"), ("sshp", "SSHP"))
CSV_FIELDS = ("method", "bits", "seed", "map_ashp", "map_sshp", "map_tie_aware_ashp", "map_tie_aware_sshp",
              "p_r2_ashp", "p_r2_sshp", "map_teacher", "val_map", "epochs", "best_epoch", "train_seconds",
              "cell_seconds", "clusters", "feature_cache")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(plt: Any, fig: Any, path: Path) -> Path:
    """Write a plot atomically (a rerun never leaves a half PNG beside the results) and free it."""
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return path


def summarise(cells: list[dict[str, Any]]) -> dict[tuple[str, int, str], tuple[float, float, int]]:
    """(method, bits, paradigm) -> (mean, std over seeds, seeds); ASHP of the student alone is left out."""
    groups: dict[tuple[str, int, str], list[float]] = {}
    for c in cells:
        for key, _ in PARADIGMS:
            if key == "ashp" and c["method"] == "none":
                continue
            groups.setdefault((c["method"], int(c["bits"]), key), []).append(float(c[f"map_{key}"]))
    return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in groups.items()}


def write_report(out: Path, cells: list[dict[str, Any]], log: Callable[[str], None] = print) -> dict[str, Any]:
    out = Path(out)
    order = list(variants())
    cells = sorted(cells, key=lambda c: (order.index(c["method"]), c["bits"], c["seed"]))
    with atomic_write(out / "results.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(cells)
    summary = summarise(cells)
    teachers = _teachers(out)
    state = json.loads((out / STATE_FILE).read_text()) if (out / STATE_FILE).is_file() else {}
    methods = [m for m in order if any(c["method"] == m for c in cells)]
    bits = sorted({int(c["bits"]) for c in cells})
    plots = []
    if cells:
        plots.append(plot_map_vs_bits(out, summary, teachers, methods, bits))
        plots.append(plot_pr_curves(out, methods, bits))
    plots += [p for p in (plot_bit_consistency(out, bits), plot_silhouette(out, bits)) if p is not None]
    atomic_write_text(out / "results.md", markdown(cells, summary, teachers, methods, bits, state, plots))
    log(f"report: {out / 'results.md'}, {out / 'results.csv'} and {len(plots)} plots")
    return {"cells": len(cells), "summary": {f"{m}/{b}/{p}": v for (m, b, p), v in summary.items()},
            "teachers": teachers, "seconds": state.get("seconds"), "plots": [str(p) for p in plots]}


def _teachers(out: Path) -> dict[int, dict[str, Any]]:
    found = {}
    for path in sorted((out / "teachers").glob("*.json")):
        record = json.loads(path.read_text())
        found[int(record["bits"])] = record
    return found


def _fmt(value: tuple[float, float, int] | None, best: bool) -> str:
    if value is None:
        return "–"
    text = f"{value[0]:.3f} ± {value[1]:.3f}"
    return f"**{text}**" if best else text


def markdown(cells, summary, teachers, methods, bits, state, plots) -> str:
    lines = ["# brcd: BRCD against knowledge-distillation baselines", ""]
    if cells:
        seeds = sorted({c["seed"] for c in cells})
        t_any = next(iter(teachers.values()), {})
        lines += [
            f"Test mAP over the whole ranking (ties by database index) on {t_any.get('queries', '?')} test queries "
            f"against {t_any.get('database', '?')} database images; mean ± std over seeds {', '.join(map(str, seeds))}. "
            "Early stopping used the validation queries only. **Bold**: best student per column (methods and ablations). "
            "ASHP = student-encoded queries against the teacher-encoded database; SSHP = student on both sides. "
            "The student trained alone (none) has its own code space, so no ASHP.",
            "",
        ]
    if state.get("command"):
        lines += [f"Command: `{state['command']}`", ""]
    if state.get("seconds") is not None:
        lines += [f"Wall time of the whole grid: {state['seconds'] / 60:.1f} min over {state.get('sessions', 1)} run(s).", ""]
    cols = [(key, label, b) for key, label in PARADIGMS for b in bits]
    lines.append("| method | " + " | ".join(f"{label} {b}" for _, label, b in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    lines.append("| teacher (bound) | " + " | ".join(
        f"{teachers[b]['map_teacher']:.3f}" if b in teachers else "–" for _, _, b in cols) + " |")
    for floor, label in (("lsh", "LSH on the teacher's features (floor)"), ("itq", "ITQ on the teacher's features (floor)")):
        if any(f"map_{floor}" in t for t in teachers.values()):
            lines.append(f"| {label} | " + " | ".join(
                f"{teachers[b][f'map_{floor}']:.3f}" if f"map_{floor}" in teachers.get(b, {}) else "–" for _, _, b in cols) + " |")
    best = {}
    for key, _, b in cols:
        values = [summary[(m, b, key)][0] for m in methods if (m, b, key) in summary]
        best[(key, b)] = max(values) if values else None
    for m in methods:
        row = []
        for key, _, b in cols:
            v = summary.get((m, b, key))
            row.append(_fmt(v, v is not None and best[(key, b)] is not None and np.isclose(v[0], best[(key, b)])))
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    lines += [""] + ranking(summary, methods, cols) + [""] + ablation_lines(summary, methods, cols)
    if plots:
        lines += ["", "## Plots", ""]
        titles = {"map_vs_bits.png": "mAP against code length", "pr_curves.png": "Hamming-radius precision-recall curves (seed 0)",
                  "bit_consistency.png": "Per-cluster bit consistency behind the mask (BRCD, seed 0)",
                  "silhouette.png": "k-means on teacher codes: silhouette and elbow curves"}
        for p in plots:
            lines += [f"### {titles.get(Path(p).name, Path(p).name)}", "", f"![{Path(p).stem}]({Path(p).name})", ""]
    return "\n".join(lines) + "\n"


def ranking(summary, methods, cols) -> list[str]:
    """BRCD's place in each column among the methods (ablations excluded), and who beats it by how much."""
    rivals = [m for m in methods if m not in ablations()]
    if "brcd" not in rivals:
        return []
    lines = ["## Where BRCD ranks", "", "Among the methods (ablations excluded), by mean test mAP; a margin smaller "
             "than the seeds' spread is not a real difference.", ""]
    for key, label, b in cols:
        if ("brcd", b, key) not in summary:
            continue
        scored = sorted(((summary[(m, b, key)][0], m) for m in rivals if (m, b, key) in summary), reverse=True)
        place = [m for _, m in scored].index("brcd") + 1
        mine = summary[("brcd", b, key)]
        above = [f"{m} (+{v - mine[0]:.4f})" for v, m in scored if v > mine[0]]
        below = [m for v, m in scored if v < mine[0]]
        text = f"- {label} {b} bits: BRCD {mine[0]:.3f} ± {mine[1]:.3f}, rank {place} of {len(scored)}"
        text += f"; ahead of it: {', '.join(above)}" if above else "; best of all methods"
        text += f"; behind it: {', '.join(below)}." if below else "."
        lines.append(text)
    return lines


def ablation_lines(summary, methods, cols) -> list[str]:
    present = [m for m in ablations() if m in methods]
    if not present or "brcd" not in methods:
        return []
    lines = ["## What each ablation changes", "",
             "Change of mean test mAP against full BRCD (negative: the removed part helped).", "",
             "| ablation | " + " | ".join(f"{label} {b}" for _, label, b in cols) + " |", "|---|" + "---|" * len(cols)]
    for m in present:
        row = []
        for key, _, b in cols:
            if (m, b, key) in summary and ("brcd", b, key) in summary:
                row.append(f"{summary[(m, b, key)][0] - summary[('brcd', b, key)][0]:+.3f}")
            else:
                row.append("–")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return lines


def _style(m: str) -> dict[str, Any]:
    if m == "brcd":
        return {"color": "black", "linewidth": 2.4, "marker": "o"}
    if m in ablations():
        return {"linestyle": ":", "marker": "."}
    if m == "none":
        return {"color": "gray", "linestyle": "--", "marker": "x"}
    return {"marker": "."}


def plot_map_vs_bits(out: Path, summary, teachers, methods, bits) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, sharey=True)
    for ax, (key, label) in zip(axes, PARADIGMS):
        if teachers:
            tb = sorted(teachers)
            ax.plot(tb, [teachers[b]["map_teacher"] for b in tb], color="tab:red", linestyle="--", linewidth=2, label="teacher")
        for m in methods:
            xs = [b for b in bits if (m, b, key) in summary]
            if not xs:
                continue
            ys = [summary[(m, b, key)][0] for b in xs]
            err = [summary[(m, b, key)][1] for b in xs]
            ax.errorbar(xs, ys, yerr=err, capsize=3, label=m, **_style(m))
        ax.set_xscale("log", base=2)
        ax.set_xticks(bits)
        ax.set_xticklabels([str(b) for b in bits])
        ax.set_xlabel("bits")
        ax.set_title(f"{label}: test mAP vs code length")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mAP")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    return _save_figure(plt, fig, out / "map_vs_bits.png")


def plot_pr_curves(out: Path, methods, bits) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(len(bits), 2, figsize=(11, 3.6 * len(bits)), dpi=100, squeeze=False)
    for row, b in enumerate(bits):
        tpath = out / "teachers" / f"{b}.npz"
        if not tpath.is_file():
            continue
        t = load_codes(tpath)
        ql, dl = t["query_labels"], t["database_labels"]
        for col, (key, label) in enumerate(PARADIGMS):
            ax = axes[row][col]
            p, r = precision_recall_curve(t["query"], t["database"], ql, dl)
            ax.plot(r, p, color="tab:red", linestyle="--", linewidth=2, label="teacher")
            for m in methods:
                cpath = out / "cells" / m / str(b) / "seed0" / CODES_FILE
                if not cpath.is_file() or (key == "ashp" and m == "none"):
                    continue
                s = load_codes(cpath)
                db = t["database"] if key == "ashp" else s["database"]
                p, r = precision_recall_curve(s["query"], db, ql, dl)
                style = {k: v for k, v in _style(m).items() if k != "marker"}
                ax.plot(r, p, label=m, **style)
            ax.set_title(f"{label}, {b} bits")
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
    axes[0][1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    return _save_figure(plt, fig, out / "pr_curves.png")


def _brcd_clusters(out: Path, b: int) -> Path | None:
    folder = out / "cells" / "brcd" / str(b) / "seed0"
    return folder if (folder / "clusters.json").is_file() else None


def plot_bit_consistency(out: Path, bits) -> Path | None:
    from safetensors.numpy import load_file

    folders = [(b, _brcd_clusters(out, b)) for b in bits]
    folders = [(b, f) for b, f in folders if f is not None]
    if not folders:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(folders), 1, figsize=(11, 2.6 * len(folders) + 0.6), dpi=100, squeeze=False,
                             constrained_layout=True)
    image = None
    for ax, (b, folder) in zip(axes[:, 0], folders):
        data = load_file(str(folder / "clusters.safetensors"))
        meta = json.loads((folder / "clusters.json").read_text())
        m, mask = data["consistency"], data["masks"]
        image = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ys, xs = np.nonzero(mask == 0)
        ax.scatter(xs, ys, marker="x", s=10, color="white", linewidths=0.7)
        ax.set_ylabel("cluster")
        ax.set_title(f"{b} bits: |mean bit| per cluster (x = masked out, margin {meta.get('margin')}, "
                     f"{int(mask.sum())}/{mask.size} kept)", fontsize=9)
    axes[-1, 0].set_xlabel("bit")
    fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.8, label="bit consistency m_ci")
    return _save_figure(plt, fig, out / "bit_consistency.png")


def plot_silhouette(out: Path, bits) -> Path | None:
    curves = []
    for b in bits:
        folder = _brcd_clusters(out, b)
        if folder is not None:
            meta = json.loads((folder / "clusters.json").read_text())
            if meta.get("curve"):
                curves.append((b, meta))
    if not curves:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110)
    for b, meta in curves:
        ks = [r["k"] for r in meta["curve"]]
        line = axes[0].plot(ks, [r["silhouette"] for r in meta["curve"]], "o-", label=f"{b} bits (k = {meta['k']})")[0]
        axes[0].axvline(meta["k"], color=line.get_color(), linestyle=":")
        inertia = np.array([r["inertia"] for r in meta["curve"]])
        axes[1].plot(ks, inertia / inertia[0], "s-", color=line.get_color(), label=f"{b} bits")
    axes[0].set_title("silhouette (the automatic choice: its maximum)")
    axes[0].set_xlabel("clusters k")
    axes[0].set_ylabel("silhouette")
    axes[1].set_title("elbow: inertia relative to k = 2")
    axes[1].set_xlabel("clusters k")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(plt, fig, out / "silhouette.png")
