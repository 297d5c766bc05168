"""Files staged in a hidden folder of a zoo, then renamed into place together (all or nothing)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["Transaction"]

logger = logging.getLogger(__name__)


class Transaction:
    """Files staged in a hidden folder of the zoo, then renamed into place together.

    A failure before `commit` leaves the zoo as it was (a zoo folder made for it is
    removed again); a failure during `commit` puts back every file it had replaced.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.created: list[Path] = []
        self.files: list[tuple[Path, Path]] = []  # (staged, target), in commit order
        self.keep = False

    def __enter__(self) -> Transaction:
        missing, p = [], self.root
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            for folder in [*reversed(missing), self.root / "runs", self.root / "specs"]:
                if not folder.exists():
                    folder.mkdir()
                    self.created.append(folder)
            self.stage = Path(tempfile.mkdtemp(prefix=".import-", dir=self.root))
        except BaseException:
            self._remove_created()
            raise
        return self

    def path(self, target: Path) -> Path:
        """Where to write the new content of ``target`` until `commit`."""
        staged = self.stage / f"{len(self.files)}-{target.name}"
        self.files.append((staged, target))
        return staged

    def commit(self) -> None:
        done: list[tuple[Path, Path | None]] = []
        try:
            for i, (staged, target) in enumerate(self.files):
                backup = None
                if target.exists():
                    backup = self.stage / f"old-{i}-{target.name}"
                    os.replace(target, backup)
                done.append((target, backup))
                os.replace(staged, target)
        except BaseException:
            for target, backup in reversed(done):
                try:
                    if backup is not None:
                        os.replace(backup, target)
                    else:
                        target.unlink(missing_ok=True)
                except OSError as err:  # keep the stage: it holds what could not be put back
                    self.keep = True
                    logger.error("zoo %s: could not put %s back (%s); its previous content is %s", self.root, target, err, backup)
            raise
        self.created = []  # the zoo is whole now: keep its folders

    def _remove_created(self) -> None:
        for folder in reversed(self.created):
            with contextlib.suppress(OSError):  # only empty folders go: never anything of someone else's
                folder.rmdir()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if not self.keep:
            shutil.rmtree(self.stage, ignore_errors=True)
        if exc_type is not None:
            self._remove_created()
