"""Does the straightness signal tell apart where EffOPD paid? (issue #18, item 3)

Reads finished regime maps (benchmarks/effopd_map.py; results/ and summary in results.json) and
plain OPD checkpoint series: runs of the map made with --checkpoint-every, in the map's own folder
or in a separate one (--series). It runs `foresight analyze` on every series, cached in
SERIES/analysis/<run>, and reads its straightness columns. Then, per task and learning rate, it
relates plain OPD's median segment cosine (consecutive checkpoint segments, median over the run,
then over seeds) to how EffOPD did at that lr: the best EffOPD method's median step speedup
against plain OPD at the same lr (over the map's targets), and the change in final accuracy.

Writes OUT/straightness.md (the table), OUT/straightness.json and OUT/effopd_straightness.png.

Run: .venv/bin/python benchmarks/effopd_straightness.py --out runs/bench-effopd-straightness \
         --map arith=runs/bench-effopd-map --series arith=runs/bench-effopd-map-arith-series \
         --map modchain=runs/bench-effopd-map-modchain --series modchain=runs/bench-effopd-map-modchain
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from foresight.dynamics.findings import EARLY, SEGMENT
from foresight.dynamics.tables import read_csv


def analyzed(run_dir: Path, out: Path) -> dict:
    """`foresight analyze` on a run (kept in `out` and reused), and its straightness: the median
    segment cosine (None without a joint) and the early direction share at each step."""
    if not (out / "overall.csv").is_file():
        command = [sys.executable, "-m", "foresight", "analyze", str(run_dir), "--out", str(out)]
        subprocess.run([*command, "--overwrite", "-q"], check=True, stdout=subprocess.DEVNULL)
    overall = read_csv(out / "overall.csv")
    cosines = [row[SEGMENT] for row in overall if row[SEGMENT] is not None]
    return {
        "median_segment_cosine": statistics.median(cosines) if cosines else None,
        "early_direction_share": [
            (row["step"], row[EARLY]) for row in overall if row[EARLY] is not None
        ],
    }


def straightness(series: Path) -> dict[float, list[float]]:
    """lr -> the median segment cosine of each plain OPD series run (one per seed)."""
    by_lr: dict[float, list[float]] = {}
    for path in sorted((series / "results").glob("opd-lr*.json")):
        run = json.loads(path.read_text())
        name = path.stem
        checkpoints = list((series / "runs" / name / "checkpoints").glob("step-*"))
        if len(checkpoints) < 3:
            continue  # not a series: the map kept only its last step
        cosine = analyzed(series / "runs" / name, series / "analysis" / name)[
            "median_segment_cosine"
        ]
        if cosine is not None:
            by_lr.setdefault(run["lr"], []).append(cosine)
    return by_lr


def outcomes(map_dir: Path) -> dict[float, dict]:
    """lr -> the best EffOPD method there: its median step speedup vs plain OPD at the same lr
    (the largest over the targets that it or plain OPD reached on some seed; None where neither
    reached any) and the median change in final accuracy. Best: by speedup, then by that change."""
    summary = json.loads((map_dir / "results.json").read_text())["summary"]
    methods: dict[tuple[float, str], dict] = {}
    for part in summary.values():
        plain = {r["lr"]: r for r in part["rows"] if r["method"] == "opd"}
        for row in part["rows"]:
            if row["method"] == "opd" or not row["step_speedup_same_lr"]:
                continue
            entry = methods.setdefault(
                (row["lr"], row["method"]),
                {
                    "method": row["method"],
                    "speedup": None,
                    "final_gain": statistics.median(row["final"])
                    - statistics.median(plain[row["lr"]]["final"]),
                },
            )
            if row["reached"] or plain[row["lr"]]["reached"]:  # else the ratio says nothing
                speedup = statistics.median(row["step_speedup_same_lr"])
                entry["speedup"] = max(speedup, entry["speedup"] or 0.0)
    best: dict[float, dict] = {}
    for (lr, _), entry in methods.items():
        key = (entry["speedup"] or 0.0, entry["final_gain"])
        if lr not in best or key > (best[lr]["speedup"] or 0.0, best[lr]["final_gain"]):
            best[lr] = entry
    return best


def pairs(text: list[str]) -> dict[str, Path]:
    return {item.split("=", 1)[0]: Path(item.split("=", 1)[1]) for item in text}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-effopd-straightness"))
    parser.add_argument("--map", nargs="+", action="extend", default=[], help="TASK=MAP_DIR")
    parser.add_argument("--series", nargs="+", action="extend", default=[], help="TASK=DIR")
    parser.add_argument(
        "--thresholds", nargs="+", type=float, default=[0.5, 0.7], help="lines drawn"
    )
    args = parser.parse_args()
    maps, series = pairs(args.map), pairs(args.series)
    rows = []
    for task, map_dir in maps.items():
        cosines = straightness(series.get(task, map_dir))
        for lr, best in sorted(outcomes(map_dir).items()):
            if lr in cosines:
                rows.append({"task": task, "lr": lr, "cosines": cosines[lr], **best})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "straightness.json").write_text(json.dumps(rows, indent=1))
    header = (
        "| task | lr | plain OPD median segment cosine (per seed) | best EffOPD method | "
        "its step speedup vs opd same lr | its final accuracy minus opd's |"
    )
    lines = [header, "|---|---|---|---|---|---|"]
    for row in rows:
        per_seed = ", ".join(f"{c:.2f}" for c in row["cosines"])
        speedup = "no target reached" if row["speedup"] is None else f"{row['speedup']:.3g}x"
        lines.append(
            f"| {row['task']} | {row['lr']:g} | {statistics.median(row['cosines']):.2f} "
            f"({per_seed}) | {row['method']} | {speedup} | {row['final_gain']:+.3f} |"
        )
    (args.out / "straightness.md").write_text("\n".join(lines) + "\n")
    plot(rows, args)
    print("\n".join(lines))


def plot(rows: list[dict], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for index, task in enumerate(dict.fromkeys(r["task"] for r in rows)):
        mine = [r for r in rows if r["task"] == task]
        x = [statistics.median(r["cosines"]) for r in mine]
        for axis, key in zip(axes, ("speedup", "final_gain")):
            shown = [(xi, r) for xi, r in zip(x, mine) if r[key] is not None]
            axis.plot([xi for xi, _ in shown], [r[key] for _, r in shown], "o",
                      color=f"C{index}", label=task)  # fmt: skip
            for xi, r in shown:
                axis.annotate(f"{r['lr']:g}", (xi, r[key]), fontsize=6, xytext=(3, 3),
                              textcoords="offset points")  # fmt: skip
    for axis, (label, level) in zip(
        axes,
        (
            ("best EffOPD step speedup\n(vs plain OPD, same lr)", 1.0),
            ("final accuracy minus\nplain OPD's (same lr)", 0),
        ),
    ):
        axis.axhline(level, color="k", linewidth=0.6, linestyle=":")
        for threshold in args.thresholds:
            axis.axvline(threshold, color="grey", linewidth=0.6, linestyle="--")
        axis.set(xlabel="plain OPD's median segment cosine", ylabel=label)
    axes[0].legend(fontsize=7, title="labels: lr", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "effopd_straightness.png", dpi=90)


if __name__ == "__main__":
    main()
