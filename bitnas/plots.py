"""Pictures of a run: cells as graphs, the strategy's scores over time, training curves."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bitnas.space.genotypes import Genotype  # noqa: E402
from bitnas.errors import BitnasError  # noqa: E402
from bitnas.common.files import read_json, read_jsonl

OP_COLORS = {
    "skip_connect": "#2ca02c", "max_pool_3x3": "#9467bd", "avg_pool_3x3": "#8c564b", "none": "#7f7f7f",
    "sep_conv_3x3": "#1f77b4", "sep_conv_5x5": "#17becf", "dil_conv_3x3": "#d62728", "dil_conv_5x5": "#ff7f0e",
    "conv_3x3": "#1f77b4", "conv_5x5": "#17becf", "dil_full_conv_3x3": "#d62728", "dil_full_conv_5x5": "#ff7f0e",
}


def _node_positions(steps: int) -> dict[str, tuple[float, float]]:
    pos = {"c_{k-2}": (0.0, 2.2), "c_{k-1}": (0.0, 0.0)}
    for i in range(steps):
        pos[str(i)] = (2.8 + 2.0 * i, 1.1 + (0.8 if i % 2 == 0 else -0.8))
    pos["c_{k}"] = (2.8 + 2.0 * steps + 0.4, 1.1)
    return pos


def draw_cell(ax: Any, edges: Sequence[tuple[str, int]], concat: Sequence[int], title: str) -> None:
    """Draw one cell: inputs c_{k-2}, c_{k-1}, intermediate nodes 0..n-1, output c_{k}."""
    steps = len(edges) // 2
    pos = _node_positions(steps)
    names = ["c_{k-2}", "c_{k-1}"] + [str(i) for i in range(steps)]
    out = pos["c_{k}"]
    for n in concat:
        ax.add_patch(FancyArrowPatch(pos[names[n]], out, arrowstyle="-|>", mutation_scale=10, lw=0.8,
                                     color="#bbbbbb", shrinkA=14, shrinkB=14, linestyle="--"))
    for k, (op, src) in enumerate(edges):
        a, b = pos[names[src]], pos[str(k // 2)]
        dx, dy = b[0] - a[0], b[1] - a[1]
        rad = 0.18 if dy >= 0 else -0.18
        color = OP_COLORS.get(op, "#333333")
        ax.add_patch(FancyArrowPatch(a, b, connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>", mutation_scale=13,
                                     lw=1.8, color=color, shrinkA=14, shrinkB=14, zorder=2))
        # label at the midpoint of the quadratic Bézier that arc3 draws (equal aspect).
        lx, ly = a[0] + dx / 2 + 0.5 * rad * dy, a[1] + dy / 2 - 0.5 * rad * dx
        ax.text(lx, ly, op, fontsize=8, color=color, ha="center", va="center", zorder=5,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=color, lw=0.5, alpha=0.9))
    for name, (x, y) in pos.items():
        is_io = name.startswith("c_")
        ax.scatter([x], [y], s=700, c="#fde9c9" if is_io else "#cfe2f3", edgecolors="#555555", zorder=3)
        ax.text(x, y, f"${name}$" if is_io else name, ha="center", va="center", fontsize=9, zorder=4)
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.set_xlim(-0.6, out[0] + 0.6)
    ax.set_ylim(-0.7, 2.9)
    ax.axis("off")


def plot_genotype(genotype: Genotype, out_dir: str | Path) -> list[Path]:
    """normal_cell.png and reduction_cell.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for cell, edges, concat in (("normal", genotype.normal, genotype.normal_concat),
                                ("reduction", genotype.reduce, genotype.reduce_concat)):
        fig, ax = plt.subplots(figsize=(9, 4.2))
        draw_cell(ax, edges, concat, f"{cell} cell")
        p = out_dir / f"{cell}_cell.png"
        fig.savefig(p, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    return paths


def plot_alphas(records: list[dict[str, Any]], ops: Sequence[str], out_png: str | Path) -> Path | None:
    """Softmaxed α of every edge across epochs, one panel per edge, for both cell types."""
    recs = [r for r in records if "alphas" in r]
    if not recs:
        return None
    epochs = [r.get("epoch", i) for i, r in enumerate(recs)]
    cells = [c for c in ("normal", "reduce") if c in recs[0]["alphas"]]
    n_edges = len(recs[0]["alphas"][cells[0]])
    fig, axes = plt.subplots(len(cells), n_edges, figsize=(1.6 * n_edges, 2.2 * len(cells)), sharey=True, squeeze=False)
    for row, cell in enumerate(cells):
        for e in range(n_edges):
            ax = axes[row][e]
            for k, op in enumerate(ops):
                ax.plot(epochs, [r["alphas"][cell][e][k] for r in recs], color=OP_COLORS.get(op), lw=1.2, label=op)
            ax.set_title(f"{cell[:3]} e{e}", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0][0].set_ylabel("softmax(α)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(ops), fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def set_epoch_ticks(ax: Any, epochs: Sequence[int]) -> None:
    """Epochs are whole: a tick at each of up to 15 epochs, else integer ticks (never 1.25, 1.5, …)."""
    if len(set(epochs)) <= 15:
        ax.set_xticks(sorted(set(epochs)))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_training(records: list[dict[str, Any]], out_png: str | Path, title: str = "training") -> Path | None:
    """Loss and top-1 curves of whatever train/val/test metrics the records hold."""
    recs = [r for r in records if "epoch" in r and any(k.endswith("loss") for k in r)]
    if not recs:
        return None
    epochs = [r["epoch"] for r in recs]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in sorted({k for r in recs for k in r}):
        vals = [r.get(key) for r in recs]
        if not all(isinstance(v, (int, float)) for v in vals):
            continue
        if key.endswith("loss"):
            a1.plot(epochs, vals, marker="o", ms=3, label=key)
        elif key.endswith("top1") or key.endswith("acc"):
            a2.plot(epochs, vals, marker="o", ms=3, label=key)
    for ax, label in ((a1, "loss"), (a2, "top-1 (%)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        set_epoch_ticks(ax, epochs)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Redraw every picture a run directory supports into run_dir/plots."""
    run_dir = Path(run_dir)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    made: list[Path] = []
    gfile = run_dir / "genotype.json"
    if gfile.exists():
        made += plot_genotype(Genotype.from_dict(read_json(gfile), str(gfile)), out)
    records = read_jsonl(run_dir / "metrics.jsonl")
    ops = _ops_of(run_dir)
    if ops:
        p = plot_alphas(records, ops, out / "alphas.png")
        made += [p] if p else []
    hist = run_dir / "cpnas_history.json"
    if hist.exists():
        from bitnas.plots_cpnas import plot_cpnas_scores

        history = read_json(hist)
        if not isinstance(history, dict) or not isinstance(history.get("ops"), list):
            raise BitnasError(f"{hist}: not a CP-NAS history (no op list)")
        made.append(Path(plot_cpnas_scores(history, out / "cpnas_scores.png")))
    p = plot_training(records, out / "training.png", title=training_title(run_dir))
    made += [p] if p else []
    return made


def _run_config(run_dir: Path) -> dict[str, Any]:
    """A run's config.yaml as a mapping ({} when absent or not a mapping)."""
    from bitnas.common.safe_yaml import read_yaml

    cfg_file = run_dir / "config.yaml"
    if not cfg_file.exists():
        return {}
    docs = read_yaml(cfg_file) or {}
    return docs if isinstance(docs, dict) else {}


def training_title(run_dir: Path) -> str:
    """What was trained, for the training plot: network, precision, width and depth, data."""
    cfg = _run_config(run_dir)
    if cfg.get("command") != "train":
        return run_dir.name
    what = str(cfg.get("network") or "") or Path(str(cfg.get("genotype") or run_dir.name)).name
    if what == "genotype.json":  # a search's output: name the search run that found it
        what = f"genotype of {Path(str(cfg['genotype'])).parent.name}"
    bits = "1-bit" if cfg.get("precision", "binary") == "binary" else "fp32"
    return (f"{bits} {what}, C = {cfg.get('init_channels')}, {cfg.get('layers')} cells, "
            f"{cfg.get('data')} ({run_dir.name})")


def _ops_of(run_dir: Path) -> list[str]:
    """The op list of a search run (from its resolved config), empty for training runs."""
    docs = _run_config(run_dir)
    resolved = docs.get("resolved")
    space = resolved.get("space") if isinstance(resolved, dict) else None
    if not isinstance(space, str) or not space:
        return []
    from bitnas.space.spaces import get_space

    return list(get_space(space).ops)
