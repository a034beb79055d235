"""The report's tables: aggregates of the per-tensor table, and their CSV reading and writing.

`modules.csv` is the tidy table (one row per checkpoint step and tensor name). From it come
`overall.csv` (one row per step), `kinds.csv` (per step and module kind) and `layers.csv` (per
step and layer). Metric means run over the 2-D attention and MLP matrices, as the paper averages;
a None (an undefined value, see docs/metrics.md) is left out of a mean, and a mean of nothing is
None. In CSV a None is an empty cell. Reports name every `dynamics/...` key in words through
labels.py (the same names as docs/metrics.md).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path

from foresight.dynamics.allocation import group_shares, shares, spearman
from foresight.module_names import ATTENTION_KINDS, MLP_KINDS

Row = dict[str, object]
# Columns that identify a row rather than measure something.
ID_COLUMNS = ("step", "progress", "module", "layer", "kind", "is_matrix")
# Columns written by summarize, not averaged from the module rows.
_SHARE_PREFIX = "dynamics/allocation"
# Groups of overall.csv's allocation columns: attention and MLP kinds pooled, the rest by kind.
_FAMILIES = ("attention", "mlp", "embedding", "lm_head", "norm", "other")


def metric_keys(rows: Iterable[Row]) -> list[str]:
    """The `dynamics/...` metric columns of the rows, in first-seen order, shares excluded."""
    keys: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key.startswith("dynamics/") and not key.startswith(_SHARE_PREFIX):
                keys.setdefault(key, None)
    return list(keys)


def mean_of(rows: list[Row], key: str) -> float | None:
    """Mean of one column over the rows that define it; None if none do."""
    values = [float(row[key]) for row in rows if row.get(key) is not None]
    return sum(values) / len(values) if values else None


def summarize(modules: list[Row], straightness: list[Row] | None = None) -> dict[str, list[Row]]:
    """overall, kinds and layers tables from the module table; also fills each module's share.

    Adds `dynamics/allocation` (the tensor's share of the step's total squared update) to every
    module row in place, since the tidy table carries it too. straightness: collect's rows of the
    whole trajectory, one per step in step order, copied into overall's rows (they are measured on
    the matrices as one vector, never a mean over them).
    """
    keys = metric_keys(modules)
    steps = sorted({int(row["step"]) for row in modules})
    by_step = {step: [row for row in modules if row["step"] == step] for step in steps}
    final_rows = by_step[steps[-1]]
    for rows in by_step.values():
        squared = [float(row["dynamics/frobenius"]) ** 2 for row in rows]
        for row, share in zip(rows, shares(squared), strict=True):
            row["dynamics/allocation"] = share
    final_shares = [row["dynamics/allocation"] for row in final_rows]
    tables: dict[str, list[Row]] = {"overall": [], "kinds": [], "layers": []}
    per_step = straightness if straightness is not None else [{} for _ in steps]
    for (step, rows), extra in zip(by_step.items(), per_step, strict=True):
        head = {"step": step, "progress": rows[0]["progress"]}
        spearman_value = spearman([row["dynamics/allocation"] for row in rows], final_shares)
        tables["overall"].append({**_overall_row(head, rows, keys, spearman_value), **extra})
        tables["kinds"].extend(_kind_rows(head, rows, keys))
        tables["layers"].extend(_layer_rows(head, rows, keys))
    return tables


def _overall_row(head: Row, rows: list[Row], keys: list[str], spearman_value: float | None) -> Row:
    squared = [float(row["dynamics/frobenius"]) ** 2 for row in rows]
    family = [_family(str(row["kind"])) for row in rows]
    family_shares = group_shares(squared, family, keep=lambda group: True)
    matrices = [row for row in rows if row["is_matrix"]]
    return {
        **head,
        **{key: mean_of(matrices, key) for key in keys},
        "dynamics/update_norm": math.sqrt(sum(squared)),
        "dynamics/allocation_spearman": spearman_value,
        **{f"dynamics/allocation_{name}": family_shares.get(name) for name in _FAMILIES},
    }


def _kind_rows(head: Row, rows: list[Row], keys: list[str]) -> list[Row]:
    squared = [float(row["dynamics/frobenius"]) ** 2 for row in rows]
    kinds = [str(row["kind"]) for row in rows]
    kind_shares = group_shares(squared, kinds, keep=lambda kind: True)
    table = []
    for kind in dict.fromkeys(kinds):
        members = [row for row in rows if row["kind"] == kind]
        table.append(
            {
                **head,
                "kind": kind,
                "count": len(members),
                **{key: mean_of(members, key) for key in keys},
                "dynamics/allocation": kind_shares[kind],
            }
        )
    return table


def _layer_rows(head: Row, rows: list[Row], keys: list[str]) -> list[Row]:
    squared = [float(row["dynamics/frobenius"]) ** 2 for row in rows]
    layers = [row["layer"] for row in rows]
    layer_shares = group_shares(squared, layers, keep=lambda layer: layer is not None)
    # Per layer and family: which of attention or MLP carries the layer's update.
    pairs = [(row["layer"], _family(str(row["kind"]))) for row in rows]
    pair_shares = group_shares(squared, pairs, keep=lambda pair: pair[0] is not None)
    table = []
    for layer in sorted(layer_shares):
        members = [row for row in rows if row["layer"] == layer and row["is_matrix"]]
        table.append(
            {
                **head,
                "layer": layer,
                **{key: mean_of(members, key) for key in keys},
                "dynamics/allocation": layer_shares[layer],
                "dynamics/allocation_attention": pair_shares.get((layer, "attention"), 0.0),
                "dynamics/allocation_mlp": pair_shares.get((layer, "mlp"), 0.0),
            }
        )
    return table


def _family(kind: str) -> str:
    if kind in ATTENTION_KINDS:
        return "attention"
    if kind in MLP_KINDS:
        return "mlp"
    return kind


def write_csv(path: Path, rows: list[Row]) -> None:
    """Write rows as CSV; columns in first-seen order, None as an empty cell."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})


def read_csv(path: Path) -> list[Row]:
    """Read a CSV written by write_csv: numbers back to int/float, empty cells to None."""
    with open(path, newline="") as handle:
        return [
            {key: _parse(value) for key, value in row.items()} for row in csv.DictReader(handle)
        ]


def _parse(text: str) -> object:
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
