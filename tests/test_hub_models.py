"""Models named by Hugging Face Hub id: `foresight train` loads student and teacher from the Hub cache
offline, a revision picks a snapshot, and a model that is neither a folder nor cached is one sentence.

The cache is built by `cache_model` in huggingface_hub's documented cache layout
(https://huggingface.co/docs/huggingface_hub/guides/manage-cache):
`<cache>/models--<org>--<name>/refs/<branch or tag>` holds a commit hash and
`<cache>/models--<org>--<name>/snapshots/<commit>/` the repo's files. (The library stores each file
once under blobs/ and links it from snapshots/; readers only look at snapshots/, so copies serve.)

huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE into `huggingface_hub.constants` when it is
imported, so the end-to-end run is a subprocess with the variables set, as a user sets them; the
quicker in-process checks patch those two constants, which every loader reads at call time.

Run: .venv/bin/python -m pytest tests/test_hub_models.py -q
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import micro_config, run_cli, save_micro_model
from huggingface_hub import constants

from foresight.config import config_to_yaml
from foresight.errors import UserError
from foresight.hub import model_folder
from foresight.models import load_model, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
MAIN_COMMIT = "1" * 40
V1_COMMIT = "2" * 40


def cache_model(cache: Path, repo_id: str, folder: Path, commit: str, ref: str = "main") -> None:
    """Put a saved model folder into `cache` as revision `ref` (-> `commit`) of Hub repo `repo_id`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """org/tiny-student (main, and tag v1 = another model) and org/tiny-teacher, micro models."""
    root = tmp_path_factory.mktemp("hub")
    cache = root / "hub-cache"
    cache_model(cache, "org/tiny-student", save_micro_model(root / "student", 0), MAIN_COMMIT)
    cache_model(cache, "org/tiny-student", save_micro_model(root / "v1", 2), V1_COMMIT, "v1")
    teacher = save_micro_model(root / "teacher", 1, sharpen=30.0)
    cache_model(cache, "org/tiny-teacher", teacher, MAIN_COMMIT)
    return cache


@pytest.fixture
def offline(hub_cache, monkeypatch, tmp_path) -> Path:
    """This process offline, reading `hub_cache`, in `tmp_path` (no `org/` folder there)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def hub_config(tmp_path: Path, **model: str) -> Path:
    cfg = micro_config("org/tiny-student", "org/tiny-teacher", tmp_path / "run", model=model)
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    return path


def test_train_loads_student_and_teacher_by_hub_id_offline(hub_cache, tmp_path):
    """The user's path: `foresight train` with Hub ids, HF_HUB_OFFLINE=1 and HF_HUB_CACHE set."""
    config = hub_config(tmp_path)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HOME": str(tmp_path / "hf-home"),  # nothing else of the machine's cache is read
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "foresight", "train", str(config)],
        cwd=tmp_path,  # holds no folder named org/, so only the cache can serve the ids
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,  # the exit code is asserted, with stderr shown
    )
    assert done.returncode == 0, done.stderr
    final = tmp_path / "run" / "checkpoints" / "step-000002"
    assert (final / "model.safetensors").is_file()
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "student: org/tiny-student" in saved and "teacher: org/tiny-teacher" in saved
    # The student it trained is the cached main snapshot: its tokenizer and shapes came along.
    trained = load_model(final, "student")
    cached = load_model(
        hub_cache / "models--org--tiny-student" / "snapshots" / MAIN_COMMIT, "student"
    )
    assert trained.state_dict().keys() == cached.state_dict().keys()
    assert not torch.equal(trained.lm_head.weight, cached.lm_head.weight)  # it trained


def test_revision_picks_the_cached_snapshot(offline, hub_cache):
    snapshots = hub_cache / "models--org--tiny-student" / "snapshots"
    for revision, commit in ((None, MAIN_COMMIT), ("v1", V1_COMMIT), (V1_COMMIT, V1_COMMIT)):
        loaded = load_model("org/tiny-student", "student", revision=revision)
        expected = load_model(snapshots / commit, "student")
        for name, tensor in expected.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), (revision, name)
    tokenizer = load_tokenizer("org/tiny-student", "student", revision="v1")
    assert tokenizer.eos_token == "<eos>" and tokenizer.padding_side == "left"


@pytest.mark.parametrize(
    ("model", "sentence"),
    [
        (
            {"student_revision": "v2"},
            (
                "model.student 'org/tiny-student' at revision 'v2' is neither a local folder nor "
                "in the Hugging Face cache (offline); download it with "
                "`hf download org/tiny-student --revision v2` or give a folder."
            ),
        ),
        (
            {"teacher": "org/absent"},
            (
                "model.teacher 'org/absent' is neither a local folder nor in the Hugging Face "
                "cache (offline); download it with `hf download org/absent` or give a folder."
            ),
        ),
    ],
)
def test_uncached_model_exits_2_with_one_sentence(offline, monkeypatch, capsys, model, sentence):
    code, _, err = run_cli(monkeypatch, capsys, "train", str(hub_config(offline, **model)))
    assert code == 2 and err.strip() == f"error: {sentence}"
    assert not (offline / "run").exists()  # refused before the run folder was made


def test_revision_of_a_local_folder_is_refused(micro_pair):
    with pytest.raises(UserError, match="model.student_revision 'v1' picks a version of a Hub"):
        load_model(micro_pair[0], "student", revision="v1")


def test_paths_stay_folders(offline, micro_pair):
    """A path that cannot be a Hub id keeps the folder messages; an existing folder wins."""
    with pytest.raises(UserError, match="model folder /nonexistent/base does not exist"):
        load_model("/nonexistent/base", "student")
    shutil.copytree(micro_pair[0], offline / "org" / "tiny-student")
    local = load_model("org/tiny-student", "student")  # the folder, not the cached snapshot
    expected = load_model(micro_pair[0], "student")
    assert torch.equal(local.lm_head.weight, expected.lm_head.weight)


def test_model_folder_is_the_cached_snapshot_for_the_analysis(offline, hub_cache, micro_pair):
    snapshots = hub_cache / "models--org--tiny-student" / "snapshots"
    assert model_folder("org/tiny-student", "student") == snapshots / MAIN_COMMIT
    assert model_folder("org/tiny-student", "student", "v1") == snapshots / V1_COMMIT
    assert model_folder(micro_pair[0], "student") == micro_pair[0]
