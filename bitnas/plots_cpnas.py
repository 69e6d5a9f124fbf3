"""The CP-NAS score plot: e(·) of every op on every edge across the removal steps."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bitnas.space.edges import steps_for

CELL_TYPES = ("normal", "reduce")


def plot_cpnas_scores(history: dict[str, Any], out_png: str | Path) -> Path:
    """Small multiples, one per edge (normal cell above, reduction cell below; a row per node, a
    column per input): each op's e(·) at every removal step, an × where the op was removed, the
    surviving op drawn bold. `history` is the dict CP-NAS writes to cpnas_history.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    ops: list[str] = list(history["ops"])
    removals: list[dict[str, Any]] = list(history.get("removals", []))
    colours = {op: plt.get_cmap("tab10")(i % 10) for i, op in enumerate(ops)}
    if not removals:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "CP-NAS: no removal step yet", ha="center", va="center")
        ax.axis("off")
        fig.savefig(out_png, dpi=100)
        plt.close(fig)
        return out_png
    num_edges = len(removals[0]["edges"]["normal"])
    steps = steps_for(num_edges)
    cols, rows = steps + 1, 2 * steps
    width, height = 2.3 * cols, 1.45 * rows + 1.3
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False, sharex=True, sharey=True)
    fig.subplots_adjust(left=0.55 / width, right=1 - 0.15 / width, bottom=0.55 / height, top=1 - 1.0 / height,
                        wspace=0.12, hspace=0.38)
    xs = list(range(1, len(removals) + 1))
    survivors = history.get("survivors", {})
    for ci, cell in enumerate(CELL_TYPES):
        edge = 0
        for node in range(steps):
            for inp in range(cols):
                ax = axes[ci * steps + node, inp]
                if inp >= node + 2:
                    ax.set_visible(False)
                    continue
                left = survivors[cell][edge] if survivors.get(cell) else []
                gone_x, gone_y = [], []
                for op in ops:
                    pts = []
                    for x, r in zip(xs, removals):
                        rec = r["edges"][cell][edge]
                        if op in rec["ops"]:
                            pts.append((x, rec["e"][rec["ops"].index(op)]))
                            if rec["removed"] == op:
                                gone_x.append(x)
                                gone_y.append(pts[-1][1])
                    if pts:
                        bold = op in left
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colours[op], lw=2.2 if bold else 0.9,
                                marker="o", ms=3.2 if bold else 2.2)
                ax.plot(gone_x, gone_y, lw=0, marker="x", color="black", ms=6, mew=1.5)
                ax.set_title(f"{cell} {inp}→{node + 2}", fontsize=8, pad=2)
                ax.grid(alpha=0.3, lw=0.5)
                edge += 1
    ax0 = axes[0, 0]
    ax0.set_ylim(-0.04, 1.04)
    ax0.set_yticks([0, 0.5, 1])
    ax0.set_xticks(xs)
    for r, row in enumerate(axes):
        for ax in row:
            ax.tick_params(labelsize=7, labelbottom=r % steps == steps - 1, length=2, pad=1)
    for row in axes:
        row[0].set_ylabel("e(·)", fontsize=8, labelpad=1)
    fig.text(0.5, 0.12 / height, "removal step", ha="center", fontsize=9)
    handles = [plt.Line2D([], [], color=colours[op], lw=2, label=op) for op in ops]
    handles.append(plt.Line2D([], [], color="black", marker="x", lw=0, ms=6, mew=1.5, label="removed"))
    s = history.get("settings", {})
    title = "CP-NAS operation scores e(·) = softmax(z̄/τ) per edge (bold: surviving op)"
    if s:
        title += f" — {s.get('indicator', '')} indicator, β_P={s.get('beta_p', '')}, T={s.get('rounds', '')}"
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / height)
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 9), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.38 / height))
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png
