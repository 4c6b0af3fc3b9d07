"""The README's test command is what CI runs."""

from conftest import ROOT


def test_ci_runs_the_readme_test_command():
    ci_lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines()
                if ln.strip() and not ln.startswith(("#", "set ", "cd "))]
    assert len(ci_lines) == 1
    assert ci_lines[0] in (ROOT / "README.md").read_text()
