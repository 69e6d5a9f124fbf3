"""The README's study results are the committed tables, copied by scripts/readme_results.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "readme_results.py"


def test_readme_blocks_equal_the_committed_tables() -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_block_is_rewritten_from_its_table(tmp_path: Path) -> None:
    (tmp_path / "res" / "s").mkdir(parents=True)
    (tmp_path / "res" / "s" / "table.md").write_text(
        "# Study `s`\n\n**Conclusion** (x): better than the control: `a`.\n\nData ...\n\n| arm |\n\n"
        "## Against the control `rg`\n\n| arm | p |\n| a | 0.01 |\n\n## Other\n\nnot copied\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:s begin -->\nstale\n<!-- results:s end -->\nrest\n")
    args = ["--readme", str(readme), "--results", str(tmp_path / "res")]
    assert subprocess.run([sys.executable, str(SCRIPT), *args, "--check"]).returncode == 1
    assert subprocess.run([sys.executable, str(SCRIPT), *args]).returncode == 0
    text = readme.read_text()
    assert "stale" not in text and "not copied" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert "**Conclusion** (x): better than the control: `a`." in text and "#### Against the control `rg`" in text
    assert subprocess.run([sys.executable, str(SCRIPT), *args, "--check"]).returncode == 0
