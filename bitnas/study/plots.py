"""A study's pictures: every trained trial's test top-1 against its OPs, coloured by arm; and each
estimator's scores against the stand-alone validation top-1 of the fidelity genotypes."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from bitnas.study.spec import StudySpec  # noqa: E402


def plot_accuracy_vs_ops(spec: StudySpec, records: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    cmap = plt.get_cmap("tab20")  # dark shades of 10 hues first, then their light shades
    for i, arm in enumerate(spec.arms):
        pts = [(r["ops"] / 1e6, r["test_top1"]) for r in records if r["arm"] == arm.name and r["kind"] == "train"]
        if not pts:
            continue
        marker = {"strategy": "o", "random_genotypes": ".", "genotype": "s", "network": "^"}[arm.kind]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=50 if marker != "." else 90, marker=marker,
                   color=cmap((2 * i + (i // 10) % 2) % 20), label=f"{arm.name} ({len(pts)})", alpha=0.85, edgecolors="none")
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.22, not 2.2×10⁻¹
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("OPs = FLOPs + BOPs/64 (millions, log scale)")
    ax.set_ylabel("test top-1 (%), epoch selected on validation")
    ax.set_title(f"study {spec.name}: every trained trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_rank_fidelity(spec: StudySpec, truth: dict[int, float], scores: dict[str, list[dict[str, Any]]],
                       rows: list[dict[str, Any]], path: Path) -> Path:
    """One panel per estimator: each seed's scores against the ground truth (`bitnas.study.report.fidelity_inputs`)."""
    assert spec.fidelity is not None
    main = [row for row in rows if row["part"] == "score"]
    n = max(1, len(main))
    cols = min(3, n)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4.6 * cols, 3.9 * math.ceil(n / cols)),
                             squeeze=False)
    for ax, row in zip(axes.flat, main):
        for r in scores.get(row["estimator"], []):
            pts = [(truth[s["index"]], s["score"]) for s in r["scores"] if s["index"] in truth]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=28, alpha=0.8, label=f"seed {r['seed']}")
        pooled = row["mean_over_seeds"]
        ax.set_title(f"{row['estimator']}: τ = {pooled['kendall_tau']:.2f} "
                     f"[{pooled['kendall_tau_ci'][0]:.2f}, {pooled['kendall_tau_ci'][1]:.2f}]", fontsize=10)
        ax.set_xlabel("stand-alone validation top-1 (%)")
        ax.set_ylabel("estimator's score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(main):]:
        ax.axis("off")
    fig.suptitle(f"rank fidelity, {len(truth)} genotypes of '{spec.fidelity.genotypes}'")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
