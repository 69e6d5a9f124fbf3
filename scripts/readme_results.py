"""Keep the README's study results equal to the committed study tables.

Between `<!-- results:NAME begin -->` and `<!-- results:NAME end -->` the README holds, for the study
folder docs/results/NAME, the sections of its table.md that answer the study's question (the
conclusion paragraph and the `Against the control`, `Rank fidelity` and `Protocol
reproducibility` sections, headings demoted to ####) — copied, never written by hand, so the prose
cannot drift from the trials. `bitnas study` writes table.md from trials.jsonl.

    python scripts/readme_results.py            # rewrite the blocks in README.md
    python scripts/readme_results.py --check    # exit 1 when a block differs (the test suite runs this)
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("Against the control", "Rank fidelity", "Protocol reproducibility")
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w.-]+) begin -->\n)(?P<body>.*?)(<!-- results:(?P=name) end -->)", re.S)


def study_block(table: str, name: str) -> str:
    """The README block of one study, from the text of its table.md."""
    lines = table.splitlines()
    out: list[str] = []
    for ln in lines:
        if ln.startswith("**Incomplete**") or ln.startswith("**Conclusion"):
            out += [ln, ""]
    keep = False
    for ln in lines:
        if ln.startswith("## "):
            keep = any(ln[3:].startswith(s) for s in SECTIONS)
            if keep:
                out.append("#" + "#" + ln)
                continue
        if keep:
            out.append(ln)
    body = "\n".join(out).strip()
    return f"{body}\n\n(Generated from `docs/results/{name}/table.md` by `scripts/readme_results.py`.)\n"


def render(readme: str, results: Path) -> str:
    def sub(m: re.Match[str]) -> str:
        table = results / m["name"] / "table.md"
        if not table.is_file():
            raise SystemExit(f"readme_results: {table} not found (named by a results block of the README)")
        return m.group(1) + study_block(table.read_text(encoding="utf-8"), m["name"]) + m.group(4)

    return BLOCK.sub(sub, readme)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--results", default=str(ROOT / "docs" / "results"))
    p.add_argument("--check", action="store_true", help="exit 1 if the README differs from the tables")
    a = p.parse_args(argv)
    path = Path(a.readme)
    text = path.read_text(encoding="utf-8")
    new = render(text, Path(a.results))
    if a.check:
        if new != text:
            print(f"readme_results: {path} is out of date; run python scripts/readme_results.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
