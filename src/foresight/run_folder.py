"""Who may write, and what may be deleted: run folders are claimed by one process and removed only
when foresight wrote them.

A run folder is recognised by its marker file (`foresight-run.json`, written when the folder is
claimed), a prepared-models folder by `prepare.json`. `--overwrite` deletes a folder only when it is
empty or holds its marker, and never the current folder, one of its parents, the home folder or a
folder holding `.git`. A run holds an exclusive `flock` on `RUN/.lock` from the claim to the end:
the OS releases it when the process dies, so a crash never leaves a stale lock behind, and a second
process on the same folder is refused at once with the holder's PID.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path

from foresight.errors import UserError

RUN_MARKER = "foresight-run.json"
LOCK_FILE = ".lock"


def check_removable(folder: Path, marker: str, option: str = "--overwrite") -> None:
    """Refuse (UserError) to delete `folder` unless foresight wrote it (`marker` inside) or it is
    empty; the current folder, its parents, the home folder and git checkouts are never deleted."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder; {option} only replaces folders.")
    resolved, here = folder.resolve(), Path.cwd().resolve()
    if resolved == here or resolved in here.parents or resolved == Path.home().resolve():
        raise UserError(
            f"{option} would delete {folder}, the current folder, one of its parents or the home "
            "folder; name a folder of its own."
        )
    if (folder / ".git").exists():
        raise UserError(f"{option} would delete {folder}, which holds a git repository; refused.")
    contents = [path for path in folder.iterdir() if path.name != LOCK_FILE]
    if contents and not (folder / marker).is_file():
        raise UserError(
            f"{option} would delete {folder}, which holds files foresight did not write (no "
            f"{marker}); move them away or choose another folder."
        )


def clear(folder: Path, keep: str | None = None) -> None:
    """Delete everything inside `folder` except the file named `keep` (the held lock)."""
    for path in Path(folder).iterdir():
        if path.name == keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


class RunLock:
    """An exclusive claim on a run folder for this process's lifetime (or until `release`)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.handle: int | None = None
        self.created = False  # this claim made the folder (removed again if set-up fails)

    def acquire(self) -> RunLock:
        """Create the folder if needed and lock it; UserError naming the holder if it is taken."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UserError(
                f"train.out_dir {self.run_dir} is a file; set train.out_dir to a folder."
            )
        self.created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(handle, 64).decode(errors="replace").strip() or "another process"
            os.close(handle)
            raise UserError(
                f"Run folder {self.run_dir} is in use by process {holder}; wait for it to end, "
                "or set train.out_dir to another folder."
            ) from None
        os.ftruncate(handle, 0)
        os.write(handle, str(os.getpid()).encode())
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            os.close(self.handle)
            self.handle = None


def holds_only_lock(run_dir: Path) -> bool:
    return all(path.name == LOCK_FILE for path in Path(run_dir).iterdir())


def write_marker(run_dir: Path, kind: str = "run") -> None:
    record = {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (Path(run_dir) / RUN_MARKER).write_text(json.dumps(record) + "\n")
