"""CI runs exactly the README's whole-suite command."""

from __future__ import annotations

from tests.conftest import ROOT


def test_ci_runs_the_readme_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.endswith("python -m pytest")
    assert f"```bash\n{ci}\n```" in readme
