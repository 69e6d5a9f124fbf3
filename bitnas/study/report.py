"""A study's report: table.md (per arm), fidelity.json, plots/accuracy_vs_ops.png and
plots/rank_fidelity.png, all made from trials.jsonl alone (rerunnable on a finished study)."""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from bitnas.study.agreement import protocol_agreement
from bitnas.study.compare import compare_to_control
from bitnas.study.fidelity import fidelity_table, ground_truth
from bitnas.study.spec import StudySpec
from bitnas.common.files import atomic_write_json, atomic_write_text


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def arm_rows(spec: StudySpec, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per arm: test/val top-1 over its trainings (mean, std, min, max), cost, parametric ops, and
    how many trainings the spec plans (a stopped study reports what it has)."""
    planned: dict[str, int] = {}
    for t in spec.trials():
        if t.kind == "train":
            planned[t.arm] = planned.get(t.arm, 0) + 1
    rows = []
    for arm in spec.arms:
        trains = [r for r in records if r["arm"] == arm.name and r["kind"] == "train"]
        searches = [r for r in records if r["arm"] == arm.name and r["kind"] == "search"]
        test = [r["test_top1"] for r in trains]
        val = [r["val_top1"] for r in trains if r.get("val_top1") is not None]
        m, s = _mean_std(test)
        vm, _ = _mean_std(val)
        conv = [r["parametric_ops"]["normal"] for r in trains if r.get("parametric_ops")]
        rows.append({
            "arm": arm.name, "kind": arm.kind, "n": len(trains), "planned": planned.get(arm.name, 0),
            "reused": sum(1 for r in trains if r.get("reused_from")),
            "test_top1_mean": m, "test_top1_std": s,
            "test_top1_min": min(test) if test else None, "test_top1_max": max(test) if test else None,
            "val_top1_mean": vm, "ops_mean": _mean_std([r["ops"] for r in trains])[0],
            "params_1bit_mean": _mean_std([r["params_1bit"] for r in trains])[0],
            "params_32bit_mean": _mean_std([r["params_32bit"] for r in trains])[0],
            "normal_convs_mean": _mean_std(conv)[0] if conv else None,
            "search_seconds_mean": _mean_std([r["search_seconds"] for r in searches])[0] if searches else 0.0,
            "search_images_mean": _mean_std([r["search_images"] for r in searches])[0] if searches else 0,
        })
    return rows


def _fmt(x: Any, spec: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def table_markdown(spec: StudySpec, rows: list[dict[str, Any]], fid: list[dict[str, Any]],
                   agreement: dict[str, Any] | None = None, comparison: list[dict[str, Any]] | None = None,
                   machines: dict[str, int] | None = None) -> str:
    p = spec.protocol
    out = [f"# Study `{spec.name}`", ""]
    if spec.description:
        out += [spec.description, ""]
    done, planned = sum(r["n"] for r in rows), sum(r["planned"] for r in rows)
    if done < planned:
        out += [f"**Incomplete**: {done} of {planned} trainings finished; `n` counts finished / planned "
                "per arm. Rerun the study's command to complete it.", ""]
    if machines:
        out += ["Machines: " + "; ".join(f"{m} ({n} trial{'s' if n > 1 else ''})" for m, n in machines.items())
                + " — the same training differs in its last digits between CPUs (oneDNN picks other kernels).", ""]
    reused = [f"{r['arm']} {r['reused']}" for r in rows if r.get("reused")]
    if reused:
        out += [f"**Shared trainings**: {sum(r['reused'] for r in rows)} of the {done} trainings were taken from "
                f"other study folders that had run the very same training (same settings, data, seed and "
                f"architecture; `reused_from` in trials.jsonl names each one's origin): {', '.join(reused)}.", ""]
    if comparison:
        out += [conclusion(spec, comparison, done < planned), ""]
    out += [f"Data `{spec.data}`; seeds {list(spec.seeds)}. Every genotype is trained under one protocol "
            f"({', '.join(f'{k}={v}' for k, v in p.items())}); the epoch is selected on a validation split "
            "carved from the training images and the test split is evaluated once, on that epoch.", "",
            "| arm | kind | n | test top-1 (mean ± std) | min / max | val top-1 | OPs (M) | params 1-bit / 32-bit "
            "| convs in normal cell | search cost (s / images) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cost = "–" if r["kind"] != "strategy" else f"{_fmt(r['search_seconds_mean'], '.0f')} / " \
                                                    f"{_fmt(r['search_images_mean'], ',.0f')}"
        n = r["n"] if r["n"] == r["planned"] else f"{r['n']}/{r['planned']}"
        out.append(
            f"| {r['arm']} | {r['kind']} | {n} | {_fmt(r['test_top1_mean'])} ± {_fmt(r['test_top1_std'])} "
            f"| {_fmt(r['test_top1_min'])} / {_fmt(r['test_top1_max'])} | {_fmt(r['val_top1_mean'])} "
            f"| {_fmt(r['ops_mean'] / 1e6 if r['ops_mean'] == r['ops_mean'] else None, '.3f')} "
            f"| {_fmt(r['params_1bit_mean'], ',.0f')} / {_fmt(r['params_32bit_mean'], ',.0f')} "
            f"| {_fmt(r['normal_convs_mean'], '.1f')} | {cost} |")
    changed = [f"`{a.name}`: {', '.join(f'{k}={v}' for k, v in a.train.items())}" for a in spec.arms if a.train]
    if changed:
        out += ["", "Arms that change the protocol: " + "; ".join(changed) + "."]
    if comparison:
        out += ["", *comparison_markdown(spec, comparison)]
    if fid:
        zero_cost = (" Zero-cost estimators score the genotype's protocol network at initialisation (per seed: "
                     "the network that seed's training starts from) on a few training batches."
                     if any(r.get("kind") == "zero_cost" for r in fid) else "")
        out += ["", "## Rank fidelity", "",
                "Kendall τ-b and Spearman ρ between each search's own estimate of a genotype (its trained state) "
                f"and the genotype's stand-alone validation top-1 under the protocol; 95 % bootstrap intervals.{zero_cost}",
                "", "| estimator | score | M | τ (mean over seeds' scores) | ρ | τ per seed |", "|---|---|---|---|---|---|"]
        for row in fid:
            pooled = row["mean_over_seeds"]
            per = ", ".join(f"s{p['seed']}: {_fmt(p['kendall_tau'])}" for p in row["per_seed"])
            out.append(f"| {row['estimator']} | {row['part']} | {pooled['m']} "
                       f"| {_fmt(pooled['kendall_tau'])} [{_fmt(pooled['kendall_tau_ci'][0])}, "
                       f"{_fmt(pooled['kendall_tau_ci'][1])}] | {_fmt(pooled['spearman_rho'])} "
                       f"[{_fmt(pooled['spearman_rho_ci'][0])}, {_fmt(pooled['spearman_rho_ci'][1])}] | {per} |")
    if agreement and (agreement["seed_noise"] or agreement["arm_agreement"]):
        out += ["", *agreement_markdown(agreement)]
    return "\n".join(out) + "\n"


def comparison_rows(spec: StudySpec, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every arm's test top-1 against the control arm's (see bitnas.study.compare)."""
    if not spec.control:
        return []
    values: dict[str, list[float]] = {}
    groups: dict[Any, list[float]] = {}
    for r in records:
        if r["kind"] == "train" and isinstance(r.get("test_top1"), (int, float)):
            values.setdefault(r["arm"], []).append(float(r["test_top1"]))
            if r["arm"] == spec.control:
                key = r["index"] if isinstance(r.get("index"), int) else ("training", len(groups))
                groups.setdefault(key, []).append(float(r["test_top1"]))
    return compare_to_control(values, spec.control, control_groups=list(groups.values()))


def conclusion(spec: StudySpec, comparison: list[dict[str, Any]], incomplete: bool) -> str:
    """One paragraph: which arms beat the control, which fall below it, which are not separable."""
    base = comparison[0]
    said = {v: [r for r in comparison if r["verdict"] == v] for v in ("better", "worse", "not shown")}

    def names(rows: list[dict[str, Any]]) -> str:
        return ", ".join(f"`{r['arm']}` ({r['difference']:+.2f}, p = {r['p_value']:.2g}, n = {r['n']})" for r in rows)

    text = (f"**Conclusion{' so far' if incomplete else ''}** (test top-1 against `{spec.control}`, mean "
            f"{_fmt(base['control_mean'])} % over {_control_count(base)}; better/worse = p < 0.05 and the 95 % "
            "interval on one side of 0): ")
    parts = [f"better than the control: {names(said['better'])}" if said["better"] else "no arm is shown better "
             "than the control"]
    if said["worse"]:
        parts.append(f"worse: {names(said['worse'])}")
    if said["not shown"]:
        parts.append(f"not separable from it: {names(said['not shown'])}")
    return text + "; ".join(parts) + "."


def comparison_markdown(spec: StudySpec, rows: list[dict[str, Any]]) -> list[str]:
    first = rows[0]
    clustered = first.get("control_unit") == "genotype mean"
    how = ("(arm over its seeds; control in two stages, its genotypes and then each genotype's seeds) and a "
           "two-sided permutation-test p-value of the arm's trainings against the control's genotype means"
           if clustered else "(arm and control resampled independently over their trainings) and a two-sided "
           "permutation-test p-value")
    out = [f"## Against the control `{spec.control}`", "",
           f"Test top-1 of each arm's trainings against `{spec.control}` ({_control_count(first)}, mean "
           f"{_fmt(first['control_mean'])} %): difference of the means in points, a 95 % bootstrap interval {how} "
           "(exact where the splits can be enumerated). Verdict: better / worse when p < 0.05 and the "
           "interval lies on one side of 0, else not shown.", "",
           "| arm | n | mean | difference | 95 % interval | p | verdict |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['arm']} | {r['n']} | {_fmt(r['mean'])} | {r['difference']:+.2f} | {_ci(r['difference_ci'])} "
                   f"| {r['p_value']:.3g}{'' if r['p_method'] == 'exact' else ' (MC)'} | {r['verdict']} |")
    return out


def _control_count(row: dict[str, Any]) -> str:
    if row.get("control_unit") == "genotype mean":
        return f"{row['n_control']} trainings of {row['control_genotypes']} genotypes"
    return f"{row['n_control']} trainings"


def _ci(c: list[float]) -> str:
    return f"[{_fmt(c[0])}, {_fmt(c[1])}]"


def agreement_markdown(agreement: dict[str, Any]) -> list[str]:
    """The protocol's reproducibility: seed noise (ICC, spreads, τ between seeds) and τ between arms."""
    out = ["## Protocol reproducibility", ""]
    if agreement["seed_noise"]:
        out += ["Genotypes trained under several seeds. ICC(1): share of the variance between genotypes (95 % "
                "bootstrap interval over genotypes); ICC(1,k): reliability of a genotype's mean over its k seeds "
                "(what a ranking by seed means can rely on); spreads are standard deviations in points; τ between "
                "seeds: mean Kendall τ-b of the rankings of two seeds.", "",
                "| arm | figure | genotypes × seeds | ICC(1) | ICC(1,k) | within-genotype std | between-genotype std "
                "| τ between seeds |", "|---|---|---|---|---|---|---|---|"]
        for n in agreement["seed_noise"]:
            for metric in ("val_top1", "test_top1"):
                m = n[metric]
                out.append(f"| {n['arm']} | {metric} | {m['genotypes']} ({m['trainings']} trainings) "
                           f"| {_fmt(m['icc'])} {_ci(m['icc_ci'])} "
                           f"| {_fmt(m.get('icc_mean'))} (k = {_fmt(m.get('seeds_per_genotype'), '.0f')}) "
                           f"| {_fmt(m['within_std'])} "
                           f"| {_fmt(m['between_std'])} | {_fmt(m['kendall_tau_between_seeds'])} |")
        out.append("")
    if agreement["arm_agreement"]:
        out += ["Arms training the same genotypes under different settings (mean over each arm's seeds): "
                "Kendall τ-b and Spearman ρ with 95 % bootstrap intervals.", "",
                "| arms | figure | M | τ | ρ |", "|---|---|---|---|---|"]
        for p in agreement["arm_agreement"]:
            for metric in ("val_top1", "test_top1"):
                c = p[metric]
                if "kendall_tau" not in c:
                    continue
                out.append(f"| {p['arms'][0]} vs {p['arms'][1]} | {metric} | {c['m']} "
                           f"| {_fmt(c['kendall_tau'])} {_ci(c['kendall_tau_ci'])} "
                           f"| {_fmt(c['spearman_rho'])} {_ci(c['spearman_rho_ci'])} |")
    return out


ZERO_COST_LABEL = "{} (zero-cost)"


def fidelity_inputs(spec: StudySpec, records: list[dict[str, Any]]
                    ) -> tuple[dict[int, float], dict[str, list[dict[str, Any]]]]:
    """(ground truth: genotype index → validation top-1, scores: estimator → one score record per
    seed). A zero-cost trial's record holds every zero-cost estimator; each becomes its own
    estimator, "NAME (zero-cost)", listed after the search estimators."""
    assert spec.fidelity is not None
    f = spec.fidelity
    truth = ground_truth(records, f.genotypes)
    scores: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["kind"] == "score":
            scores.setdefault(r["arm"], []).append(r)
    for r in records:
        if r["kind"] == "zero_cost":
            for name in r["estimators"]:
                per = [{"index": s["index"], "score": s[name]} for s in r["scores"]]
                scores.setdefault(ZERO_COST_LABEL.format(name), []).append({"seed": r["seed"], "scores": per})
    return truth, scores


def fidelity_rows(spec: StudySpec, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if spec.fidelity is None:
        return []
    truth, scores = fidelity_inputs(spec, records)
    rows = fidelity_table(scores, truth, spec.fidelity.bootstrap)
    searches = {r["arm"] for r in records if r["kind"] == "score"}
    return [{**r, "kind": "search" if r["estimator"] in searches else "zero_cost"} for r in rows]


def machine_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    """CPU model → number of searches and trainings that ran on it (records that name their machine)."""
    out: dict[str, int] = {}
    for r in records:
        m = r.get("machine")
        if isinstance(m, dict) and isinstance(m.get("cpu"), str):
            out[m["cpu"]] = out.get(m["cpu"], 0) + 1
    return out


def write_report(spec: StudySpec, out: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    rows = arm_rows(spec, records)
    fid = fidelity_rows(spec, records)
    agreement = protocol_agreement(spec, records)
    comparison = comparison_rows(spec, records)
    machines = machine_counts(records)
    atomic_write_text(out / "table.md", table_markdown(spec, rows, fid, agreement, comparison, machines))
    report = {"study": spec.name, "arms": rows, "control": spec.control, "comparison": comparison,
              "fidelity": fid, "protocol_agreement": agreement, "trials": len(records), "machines": machines}
    atomic_write_json(out / "report.json", report)
    from bitnas.study.plots import plot_accuracy_vs_ops, plot_rank_fidelity

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    if any(r["kind"] == "train" for r in records):
        plot_accuracy_vs_ops(spec, records, plots / "accuracy_vs_ops.png")
    if fid:
        truth, scores = fidelity_inputs(spec, records)
        plot_rank_fidelity(spec, truth, scores, fid, plots / "rank_fidelity.png")
    return report
