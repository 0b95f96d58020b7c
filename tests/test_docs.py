"""README stays true: its config table is the one config.py generates, its test command is CI's."""
import subprocess
from pathlib import Path

from adapter4rec.config import reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_table_is_current():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert reference_markdown() in readme, (
        "README's config table is stale: paste `python -c 'from adapter4rec.config import "
        "reference_markdown as r; print(r())'` into the Config reference section")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci
    cmd = subprocess.run(["awk", '/<!-- test-command -->/{getline; while ($0 ~ /^```/) getline; print; exit}',
                          str(ROOT / "README.md")], capture_output=True, text=True).stdout.strip()
    assert cmd.endswith("python -m pytest") and "pip install" in cmd
