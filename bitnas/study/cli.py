"""`bitnas study SPEC`: run a study (arms × seeds under one protocol) and write its report."""
from __future__ import annotations

import argparse


def cmd_study(args: argparse.Namespace) -> int:
    from bitnas.study.runner import run_study
    from bitnas.study.spec import load_spec

    spec = load_spec(args.spec, list(args.overrides or []))
    out = args.out or f"runs/study-{spec.name}"
    run_study(spec, out, fidelity_only=args.fidelity, reuse=args.reuse)
    print(f"study {spec.name}: {out}/table.md, {out}/trials.jsonl, {out}/plots/")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="run a study: searches and controls over several seeds under one training protocol",
        description="Run every arm of a study (a YAML file or a shipped study_* recipe) over its seeds: searches, "
                    "random genotypes, published genotypes and hand-designed networks, each trained under the "
                    "study's protocol. Writes trials.jsonl, table.md, report.json and plots/ to --out. A killed "
                    "study rerun with the same command skips finished trials and resumes the interrupted ones.")
    p.add_argument("spec", metavar="STUDY", help="study YAML file or shipped recipe name (bitnas recipes)")
    p.add_argument("--out", help="study folder (default runs/study-<name>)")
    p.add_argument("--fidelity", action="store_true",
                   help="run only what the fidelity: block needs (ground-truth trainings, the estimators' "
                        "searches and their scoring)")
    p.add_argument("--reuse", action="append", default=[], metavar="DIR",
                   help="another study folder whose finished trainings are taken where this study would run the "
                        "very same training (same protocol, data, seed and architecture; random, published and "
                        "hand-designed networks); repeatable; each shared record names its origin (reused_from)")
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="e.g. workers=2 executor=ray protocol.epochs=1 search.train_subset=500")
    p.set_defaults(func=cmd_study)
