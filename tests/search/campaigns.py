"""The campaign the search tests run: two agreement tasks (one per fine-tune) on a tiny family,
with overrides per test. Imported like `agreement_task` (tests/search is on sys.path)."""

from pathlib import Path

import yaml
from click.testing import CliRunner

from evo_merge.cli import cli


def agreement_tasks(fts, **options) -> list[dict]:
    """One task per fine-tune: agreement with its next-token choices, named agree<i>."""
    return [{"task": "agreement_task:AgreementTask", "name": f"agree{i}",
             "options": {"reference": str(f), "name": f"agree{i}", "seed": i, **options}} for i, f in enumerate(fts)]


def campaign_config(base, fts, **overrides) -> dict:
    return {
        "base_model": str(base), "models": [str(f) for f in fts], "tasks": agreement_tasks(fts),
        "methods": {"task_arithmetic": {}, "ties": {"density": [0.2, 0.9]}},
        "estimator": {"kind": "full"},
        "algorithm": {"population": 6, "generations": 2, "seed": 2},
        "final": {"evaluate_top": 2, "export": ["balanced"]},
        **overrides,
    }


def write_campaign(path: Path, base, fts, **overrides) -> Path:
    path.write_text(yaml.safe_dump(campaign_config(base, fts, **overrides)))
    return path


def run_campaign(path: Path, out: Path) -> Path:
    """`evo-merge run PATH --out OUT`, asserting it succeeds."""
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out
