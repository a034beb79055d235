"""log.py: labelled progress (plain lines without a terminal, one live display on a terminal),
verbosity, and the run logger's trackers.

Run: .venv/bin/python -m pytest tests/test_log.py -q
"""

from __future__ import annotations

import logging

import pytest

from foresight.log import progress, say, set_verbosity, stage


@pytest.fixture(autouse=True)
def normal_verbosity():
    set_verbosity(0)
    yield
    logging.getLogger("foresight").setLevel(logging.NOTSET)


def test_without_a_terminal_a_plain_line_every_n_units_and_at_the_end(capsys):
    with stage("demo"), stage("plain OPD"), progress("step", 10, every=4) as bar:
        for _ in range(10):
            bar.advance(note="loss 0.5")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" · loss")[0] for line in lines] == [
        f"demo · plain OPD · step {n}/10" for n in (4, 8, 10)
    ]
    assert all(line.endswith(" s") for line in lines)


def test_default_interval_gives_about_ten_lines(capsys):
    with progress("generating", 500) as bar:
        for start in range(0, 500, 64):  # batches of 64: a line whenever a multiple of 50 passes
            bar.advance(min(64, 500 - start))
    counts = [line.split()[1] for line in capsys.readouterr().err.splitlines()]
    assert counts == [f"{n}/500" for n in (64, 128, 192, 256, 320, 384, 448, 500)]


def test_quiet_hides_progress_and_info_lines(capsys):
    set_verbosity(-1)
    with progress("step", 3, every=1) as bar:
        bar.advance(3)
    say("scored 3 prompts")
    assert capsys.readouterr().err == ""


def test_nested_bars_share_one_live_display_on_a_terminal(monkeypatch, capsys):
    """rich allows one live display at a time: a bar opened inside another (evaluation inside
    training) must join it, not start a second one (rich raises LiveError)."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: treat the captured stderr as a terminal
    with stage("train"), progress("step", 2) as outer:
        assert outer.live is not None
        with progress("generating", 4) as inner:
            assert inner.live is outer.live
            inner.advance(4)
        assert inner.live is None and len(outer.live.tasks) == 1
        outer.advance(2)
    assert "train · step" in capsys.readouterr().err
