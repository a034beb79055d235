"""Small real reports for the report tests: the tiny Llama series analysed, and a compare report.

    .venv/bin/python -m pytest tests/test_reports_browser.py tests/compare/test_compare.py -q

`analysis_report(root)` runs `analyze` (probes included, through the distance scorer) on the series
of tests/dynamics/series.py, laid out as a foresight run folder with its config and marker.
`compare_report(root, analysis)` builds the plan of a two-method `foresight compare` on that series
and writes its report from copies of the one analysis, without training anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from dynamics.series import PROBE_CFG, DistanceScorer, write_series

from foresight.config import Config
from foresight.run_folder import write_marker

RUN_SETTINGS = {
    "task": {"name": "arith"},
    "train": {"method": "opd", "steps": 40},
    "optim": {"lr": 0.0005},
    "rollout": {"prompts_per_step": 16},
    "loss": {"kind": "reverse_kl"},
}

COMPARE_YAML = """
model: {{student: {base}, teacher: {base}}}
task: {{name: arith}}
rollout: {{prompts_per_step: 4}}
log: {{tensorboard: false, progress: false}}
compare:
  out_dir: {out}
  seeds: [0]
  steps: 27
  early_checkpoints: 8
  methods:
    opd: {{lr: 5.0e-4}}
    rl: {{lr: 1.0e-4, set: [rollout.group_size=4]}}
"""


def analysis_report(root: Path) -> tuple[Path, dict]:
    """(report folder, metrics.json contents) of the series, analysed as a foresight run."""
    base, checkpoints = write_series(root)
    run = checkpoints[0][1].parent.parent
    cfg = Config.model_validate({"model": {"student": str(base), "teacher": None}, **RUN_SETTINGS})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    write_marker(run)
    from foresight.dynamics import analyze

    out = root / "analysis"
    scorer = DistanceScorer(base, checkpoints[-1][1])
    return out, analyze(base, checkpoints, out, PROBE_CFG, scorer)


def compare_report(root: Path, analysis: Path) -> Path:
    """The compare folder whose report.html compares two methods; every run reads `analysis`."""
    from foresight.compare.claims import judge, run_measures
    from foresight.compare.plan import load_plan
    from foresight.compare.report import write_report

    base = json.loads((analysis / "provenance.json").read_text())["base"]
    out = root / "cmp"
    config = root / "compare.yaml"
    config.write_text(COMPARE_YAML.format(base=base, out=out))
    _, runs = load_plan(config)
    measures: dict[str, list[dict]] = {}
    for number, run in enumerate(runs):
        shutil.copytree(analysis, out / "analysis" / run.label)
        run_dir = Path(run.cfg.train.out_dir)
        run_dir.mkdir(parents=True)
        rows = [
            {"step": step, "time/step_s": 0.5, "eval/accuracy": 0.2 + 0.1 * number + step / 100}
            for step in (0, 9, 18, 27)
        ]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        measures.setdefault(run.method, []).append(run_measures(out / "analysis" / run.label))
    write_report(out, runs, measures, judge(measures))
    return out
