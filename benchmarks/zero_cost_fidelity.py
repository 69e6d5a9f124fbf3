"""Rank fidelity of the zero-cost estimators on a finished study's ground truth, without rerunning it.

Reads the study's `trials.jsonl`: the trained genotypes of its fidelity arm (`--arm`, default the
`random_genotypes` arm) with their stand-alone validation top-1 and training config. For each
seed, every genotype's protocol network is initialised with that seed and scored on training
batches (`bitnas.study.estimators.protocol`), as a study's zero-cost trial would; printed: Kendall
τ-b and Spearman ρ with 95 % bootstrap intervals per estimator, per seed and for the scores
averaged over seeds (`bitnas.study.fidelity.fidelity_table`), and the seconds per genotype.

    python benchmarks/zero_cost_fidelity.py docs/results/study_fmnist_cpu_pilot/trials.jsonl --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    from bitnas.config import update_config
    from bitnas.space.genotypes import Genotype
    from bitnas.study.estimators.protocol import score_genotypes
    from bitnas.study.estimators.zero_cost import ZERO_COST
    from bitnas.study.fidelity import fidelity_table
    from bitnas.train.config import TrainConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trials", help="a study's trials.jsonl")
    p.add_argument("--arm", default="random_genotypes", help="the ground-truth random_genotypes arm")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--estimators", nargs="+", default=ZERO_COST.names())
    p.add_argument("--batches", type=int, default=0, help="training batches (0 = as few as the estimators need)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--json", default="", help="also write the scores and the table to this file")
    a = p.parse_args()
    torch.set_num_threads(1)
    recs = [json.loads(ln) for ln in Path(a.trials).read_text(encoding="utf-8").splitlines() if ln.strip()]
    gt = sorted((r for r in recs if r["arm"] == a.arm and r["kind"] == "train" and r.get("val_top1") is not None),
                key=lambda r: r["index"])
    if len(gt) < 3:
        raise SystemExit(f"{a.trials}: {len(gt)} trained genotypes of arm {a.arm}; rank fidelity needs 3")
    truth = {r["index"]: r["val_top1"] for r in gt}
    genotypes = [Genotype.from_dict(r["genotype"]) for r in gt]
    base = {k: v for k, v in gt[0]["config"].items() if k not in ("out", "genotype", "resume", "seed")}
    per_est: dict[str, list[dict]] = {}
    for seed in a.seeds:
        cfg = update_config(TrainConfig(), {**base, "seed": seed, "threads": 1}, a.trials).validate()
        t0 = time.perf_counter()
        res = score_genotypes(cfg, genotypes, a.estimators, a.batches)
        dt = (time.perf_counter() - t0) / len(genotypes)
        print(f"seed {seed}: {dt:.1f} s per genotype ({len(a.estimators)} estimators, data loading included)")
        for name in res["estimators"]:
            scores = [{"index": gt[s["index"]]["index"], "score": s[name]} for s in res["scores"]]
            per_est.setdefault(name, []).append({"seed": seed, "scores": scores})
    rows = fidelity_table(per_est, truth, a.bootstrap)
    print(f"\n{len(gt)} genotypes of '{a.arm}', ground truth: validation top-1 "
          f"{min(truth.values()):.2f}–{max(truth.values()):.2f} %\n")
    print("| estimator | τ (scores averaged over seeds) [95 %] | ρ [95 %] | τ per seed |")
    print("|---|---|---|---|")
    for row in rows:
        m = row["mean_over_seeds"]
        per = ", ".join(f"s{q['seed']}: {q['kendall_tau']:.2f}" for q in row["per_seed"])
        print(f"| {row['estimator']} | {m['kendall_tau']:.2f} [{m['kendall_tau_ci'][0]:.2f}, "
              f"{m['kendall_tau_ci'][1]:.2f}] | {m['spearman_rho']:.2f} [{m['spearman_rho_ci'][0]:.2f}, "
              f"{m['spearman_rho_ci'][1]:.2f}] | {per} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"scores": per_est, "truth": truth, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
