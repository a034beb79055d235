"""Legibility checks on matplotlib figures, shared by the plot tests of dynamics/ and compare/.

    .venv/bin/python -m pytest tests/dynamics/test_plots.py tests/compare/test_compare.py -q

`capture(monkeypatch, module)` records every Figure a plotting module saves; `problems(fig)` lists
what would read badly: a legend entry matplotlib hides or a raw metric key, a layer axis with
ticks between layers, a title or tick label cut off by the figure's edge, x tick labels that
overlap their neighbours.
"""

from __future__ import annotations

from matplotlib.figure import Figure


def capture(monkeypatch, module, write: bool = True) -> dict[str, Figure]:
    """stem -> Figure for every figure `module._save(fig, fig_dir, stem)` saves from now on; with
    write=False the PNG files are not written (faster, where nothing reads them)."""
    figures: dict[str, Figure] = {}
    save = module._save

    def recording(fig, fig_dir, stem):
        figures[stem] = fig
        return save(fig, fig_dir, stem) if write else stem

    monkeypatch.setattr(module, "_save", recording)
    return figures


def legend_labels(fig: Figure) -> list[str]:
    return [
        text.get_text()
        for ax in fig.axes
        if ax.get_legend() is not None
        for text in ax.get_legend().get_texts()
    ]


def problems(fig: Figure) -> list[str]:
    """What a reader would trip over in `fig`; [] for a legible figure."""
    fig.draw_without_rendering()
    found = [
        f"legend entry {text!r}"
        for text in legend_labels(fig)
        if text.startswith("_") or "dynamics/" in text
    ]
    edge = fig.bbox.padded(1)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        if "layer" in ax.get_xlabel():
            low, high = sorted(ax.get_xlim())
            ticks = [t for t in ax.get_xticks() if low <= t <= high]
            if any(t != round(t) for t in ticks):
                found.append(f"half-layer ticks on {ax.get_xlabel()!r}: {ticks}")
        for title in (ax.title, ax._left_title, ax._right_title):
            box = title.get_window_extent()
            if title.get_text() and not _inside(box, edge):
                found.append(f"title {title.get_text()!r} runs off the figure")
        for ticks, limits, along in (
            (ax.get_xticklabels(), ax.get_xlim(), 0),
            (ax.get_yticklabels(), ax.get_ylim(), 1),
        ):
            # The locator also places ticks beyond the view limits, which are never drawn.
            low, high = sorted(limits)
            shown = [
                t
                for t in ticks
                if t.get_text() and t.get_visible() and low <= t.get_position()[along] <= high
            ]
            found += _tick_problems(shown, edge)
    return found


def _tick_problems(labels: list, edge) -> list[str]:
    """Tick labels cut off by the figure's edge, or overlapping the next one along the axis."""
    found = []
    boxes = [label.get_window_extent() for label in labels]
    for label, box in zip(labels, boxes, strict=True):
        if not _inside(box, edge):
            found.append(f"tick label {label.get_text()!r} runs off the figure")
    for index in range(len(labels) - 1):
        if boxes[index].overlaps(boxes[index + 1]):
            pair = (labels[index].get_text(), labels[index + 1].get_text())
            found.append(f"tick labels {pair[0]!r} and {pair[1]!r} overlap")
    return found


def _inside(box, edge) -> bool:
    return box.x0 >= edge.x0 and box.x1 <= edge.x1 and box.y0 >= edge.y0 and box.y1 <= edge.y1
