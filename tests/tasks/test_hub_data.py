"""task.path as a Hugging Face Hub dataset id, offline: a dataset in the datasets cache loads through
`datasets.load_dataset(id, split=task.split)`, and as `foresight eval --task org/name`; one that is not
cached is one sentence (exit 2).

`datasets` reads HF_HUB_OFFLINE and HF_DATASETS_CACHE into `datasets.config` at import, so the
checks run in a subprocess with those variables set, as a user sets them. There, the cache entry of
`org/chat` is written by the library's own JSON builder (`download_and_prepare(output_dir=...)`) at
the place where datasets keeps a Hub dataset once an online `load_dataset` has prepared it,
`<HF_DATASETS_CACHE>/<org>___<name>/<config>/<version>/<commit>/`; offline, `load_dataset` finds
the newest such folder (its "Using the latest cached version" path).

Run: .venv/bin/python -m pytest tests/tasks/test_hub_data.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from builders import micro_config

from foresight.config import config_to_yaml

SCRIPT = r"""
import contextlib, io, json, sys
from pathlib import Path

import datasets
from datasets.packaged_modules.json.json import Json

from foresight.cli import main
from foresight.config_sections import TaskConfig
from foresight.errors import UserError
from foresight.tasks import load_task

rows, absent_config = Path(sys.argv[1]), sys.argv[2]
files = {split: str(rows / f"{split}.jsonl") for split in ("train", "test")}
cached = Path(datasets.config.HF_DATASETS_CACHE) / "org___chat" / "default" / "0.0.0" / ("3" * 40)
builder = Json(dataset_name="chat", config_name="default", data_files=files, cache_dir=sys.argv[3])
builder.download_and_prepare(output_dir=str(cached))

found = {}
for split in ("train", "test"):
    held_out = {"val_path": sys.argv[4], "test_path": sys.argv[5]}
    task = load_task(TaskConfig(name="jsonl", path="org/chat", split=split, **held_out))
    found[split] = [[list(map(list, e.prompt)), e.answer, e.solution] for e in task.sample("all", 1000, 0)]
try:
    load_task(TaskConfig(name="jsonl", path="org/chat", split="validation"))
except UserError as err:
    found["unknown_split"] = str(err)
# `foresight eval MODEL --task org/plain`: a Hub id as the task, all rows of its train split
# (plain prompts: the micro student has no chat template).
plain = cached.parent.parent.parent.parent / "org___plain" / "default" / "0.0.0" / ("4" * 40)
files = {"train": sys.argv[7]}
builder = Json(dataset_name="plain", config_name="default", data_files=files, cache_dir=sys.argv[3])
builder.download_and_prepare(output_dir=str(plain))
sys.argv = ["foresight", "eval", sys.argv[6], "--task", "org/plain", "--json"]
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    try:
        main()
    except SystemExit as exit_:
        found["eval_exit"] = exit_.code
found["eval"] = json.loads(printed.getvalue())
sys.argv = ["foresight", "train", absent_config]
try:
    main()
except SystemExit as exit_:
    found["absent_exit"] = exit_.code
print(json.dumps(found))
"""


def chat_record(i: int, reply: bool) -> dict:
    messages = [{"role": "user", "content": f"{i}+1="}]
    if reply:
        messages.append({"role": "assistant", "content": f"{i + 1}"})
    return {"messages": messages, "answer": str(i + 1)}


def write_lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_hub_dataset_loads_from_the_datasets_cache_offline(micro_pair, tmp_path):
    rows = tmp_path / "rows"
    rows.mkdir()
    write_lines(rows / "train.jsonl", [chat_record(i, reply=True) for i in range(6)])
    write_lines(rows / "test.jsonl", [chat_record(i, reply=False) for i in range(100, 103)])
    # Held-out rows from local files, so that every Hub row is a training row (read with "all").
    val = write_lines(tmp_path / "val.jsonl", [{"prompt": "1+1=", "answer": 2}])
    test = write_lines(tmp_path / "test.jsonl", [{"prompt": "2+1=", "answer": 3}])
    task = {"name": "jsonl", "path": "org/absent"}
    absent = micro_config(*micro_pair, tmp_path / "run", task=task)
    (tmp_path / "absent.yaml").write_text(config_to_yaml(absent))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),  # an empty Hub cache and datasets cache
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
        "OMP_NUM_THREADS": "1",
    }
    splits = ("train", "val", "test")  # given per row: 9 rows are too few for the hash split
    plain_rows = [{"prompt": f"{i}+1=", "answer": i + 1, "split": splits[i % 3]} for i in range(9)]
    plain = write_lines(tmp_path / "plain.jsonl", plain_rows)
    args = [rows, tmp_path / "absent.yaml", tmp_path / "scratch", val, test, micro_pair[0], plain]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *map(str, args)],
        cwd=tmp_path,  # holds no folder named org/
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,  # the exit code is asserted, with stderr shown
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    # Hub rows in order, read by split; a last assistant message is the solution.
    assert found["train"][:2] == [[[["user", "0+1="]], "1", "1"], [[["user", "1+1="]], "2", "2"]]
    assert len(found["train"]) == 6 + 2  # and the val and test files' rows
    assert [row[:3] for row in found["test"][:3]] == [
        [[["user", f"{i}+1="]], str(i + 1), ""] for i in range(100, 103)
    ]
    assert found.get("eval_exit", 0) == 0 and found["eval"]["eval/prompts"] == 9  # every row
    unknown_split = found["unknown_split"]
    assert "datasets could not read split 'validation' of task.path 'org/chat'" in unknown_split
    assert found["absent_exit"] == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    sentence = (
        "task.path 'org/absent' is neither a local file nor a dataset in the Hugging Face "
        "datasets cache (offline); load it once online, or give a JSONL or Parquet file."
    )
    assert errors == [f"error: {sentence}"]
