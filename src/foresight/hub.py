"""Names that may point at the Hugging Face Hub: a model given as a local folder or a Hub id (with a
revision), resolved to a `ModelSource`, and the repo-id test that task.path uses for datasets too.

A Hub id goes through huggingface_hub's own download and cache: fetched when online, read from the
cache offline, with HF_HUB_OFFLINE, HF_HOME and HF_HUB_CACHE read by the library as it always does
(nothing here reads the cache's layout). An existing folder always wins over a Hub id of the same
spelling, as in transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download, is_offline_mode, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from foresight.errors import UserError


def check_model_folder(folder: Path, role: str) -> None:
    """Fail with a UserError unless `folder` looks like an HF model folder."""
    folder = Path(folder)
    if folder.is_file():
        raise UserError(
            f"model.{role} {folder} is a file; point it at a Hugging Face model folder."
        )
    if not folder.is_dir():
        raise UserError(
            f"The {role} model folder {folder} does not exist; run `foresight prepare` or fix "
            f"model.{role} in the config."
        )
    if not (folder / "config.json").is_file():
        raise UserError(
            f"The {role} model folder {folder} has no config.json; point model.{role} at a Hugging "
            "Face model folder (save_pretrained output)."
        )


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files come from: a local folder, or a Hub id at a revision."""

    name: str  # the folder or the Hub id, as from_pretrained takes it
    revision: str | None  # Hub ids only; None = the default branch (main)
    config_file: Path  # its config.json: the folder's, or huggingface_hub's cached copy
    is_local: bool

    def options(self) -> dict[str, Any]:
        """from_pretrained's keywords after `name`: a folder is read as it is, never looked up on
        the Hub; a Hub id goes through the libraries' cache and their offline switch."""
        return {"local_files_only": True} if self.is_local else {"revision": self.revision}

    def fix(self) -> str:
        """What the user can do when its files do not load."""
        if self.is_local:
            return "check the folder"
        return f"download it with {download_command(self.name, self.revision)} or give a folder"


def is_hub_id(name: str) -> bool:
    """Whether `name` names a Hub repo: no such path here, and a valid `name` or `org/name`."""
    if Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def download_command(repo_id: str, revision: str | None) -> str:
    return f"`hf download {repo_id}{'' if revision is None else f' --revision {revision}'}`"


def locate_model(name: str | Path, role: str, revision: str | None = None) -> ModelSource:
    """Check that model.{role} names a model folder or a Hub model whose config.json is reachable
    (cached, or downloadable when online); a UserError says what is missing."""
    text = str(name)
    if not is_hub_id(text):
        if revision is not None:
            raise UserError(
                f"model.{role}_revision '{revision}' picks a version of a Hub model, but "
                f"model.{role} {text} is a local path; remove model.{role}_revision."
            )
        check_model_folder(Path(text), role)
        return ModelSource(text, None, Path(text) / "config.json", True)
    return ModelSource(text, revision, hub_config_file(text, role, revision), False)


def hub_config_file(repo_id: str, role: str, revision: str | None) -> Path:
    """The cached config.json of a Hub model (huggingface_hub downloads it when online)."""
    at = "" if revision is None else f" at revision '{revision}'"
    try:
        return Path(hf_hub_download(repo_id, "config.json", revision=revision))
    except GatedRepoError:
        raise UserError(
            f"model.{role} '{repo_id}' is a gated model on the Hugging Face Hub; accept its terms "
            "on its page and log in with `hf auth login`."
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"model.{role} '{repo_id}' is neither a local folder nor a model on the Hugging Face "
            "Hub (or it is private: log in with `hf auth login`); fix the name or give a folder."
        ) from None
    except RevisionNotFoundError:
        raise UserError(
            f"model.{role}_revision '{revision}' is not a branch, tag or commit of {repo_id} on "
            f"the Hugging Face Hub; fix model.{role}_revision."
        ) from None
    except LocalEntryNotFoundError:  # not cached, and offline or the Hub unreachable
        why = "offline" if is_offline_mode() else "the Hub could not be reached"
        raise UserError(
            f"model.{role} '{repo_id}'{at} is neither a local folder nor in the Hugging Face "
            f"cache ({why}); download it with {download_command(repo_id, revision)} or give a "
            "folder."
        ) from None
    except EntryNotFoundError:  # the repo exists but has no config.json
        raise UserError(
            f"model.{role} '{repo_id}'{at} has no config.json on the Hugging Face Hub, so it is "
            "not a transformers model; give a transformers model repo or folder."
        ) from None
    except HfHubHTTPError as exc:
        raise UserError(
            f"The Hugging Face Hub refused model.{role} '{repo_id}' ({one_line(exc)}); retry "
            f"later, or download it with {download_command(repo_id, revision)}."
        ) from None


def model_folder(name: str | Path, role: str, revision: str | None = None) -> Path:
    """A local folder holding the model's files, for readers of raw safetensors (the analysis):
    the folder itself, or the Hub model's snapshot in the Hugging Face cache (complete only once
    the model was loaded or downloaded: never fetched here)."""
    source = locate_model(name, role, revision)
    if source.is_local:
        return Path(source.name)
    try:
        return Path(snapshot_download(source.name, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        raise UserError(
            f"model.{role} '{source.name}' is not fully in the Hugging Face cache; download it "
            f"with {download_command(source.name, revision)} or give a folder."
        ) from None


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (library messages often span several)."""
    return " ".join(str(exc).split())
