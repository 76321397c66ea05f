"""A model picker for the Merge tab: path field + Browse, and a line saying what the chosen file is.

The description (format, arch, dtype, tensor count, size) comes from the safetensors header alone, so it is read
right away; the short hash needs the whole file and arrives later from a `HashQueue` job. A problem (truncated
file, not SDXL, a LoKr where a checkpoint is expected) is shown in place of the description, naming the file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from trainer_core.errors import KxlError
from trainer_core.models.checkpoint_info import CheckpointInfo, describe_checkpoint
from trainer_core.progress import Progress
from trainer_core.workspace_summary import format_bytes

from ..jobs import Job
from ..kit.path_row import open_path_dialog

HASH_PENDING = "hashing…"
KIND_TEXT = {"sdxl-single-file": "single-file", "diffusers-folder": "diffusers folder", "lokr": "LoKr"}


class HashRequest:
    """One file to hash; `cancel()` when its answer is no longer wanted (the picker's path changed)."""

    def __init__(self, path: Path, done: Callable[[str | None, str | None], None]) -> None:
        self.path = path
        self.done = done
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class HashQueue(QObject):
    """Short hashes, one file at a time: several 7 GB reads in parallel would only thrash the disk. A cancelled
    request still waiting is skipped (no 7 GB read for a file the user has already replaced); one being hashed
    finishes (hashing has no cancel point) but its answer is dropped."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._queue: list[HashRequest] = []
        self._job: Job | None = None

    def request(self, path: Path, done: Callable[[str | None, str | None], None]) -> HashRequest:
        """`done(hash, error)` is called on the GUI thread, unless the returned request was cancelled."""
        req = HashRequest(path, done)
        self._queue.append(req)
        if self._job is None:
            self._next()
        return req

    def _next(self) -> None:
        self._queue = [r for r in self._queue if not r.cancelled]
        if not self._queue:
            self._job = None
            return
        req = self._queue.pop(0)

        def compute(_p: Progress) -> str:
            from trainer_core.hashing import short_hash

            return short_hash(req.path)

        job = Job(compute, name=f"hash {req.path.name}", parent=self)
        job.succeeded.connect(lambda h: None if req.cancelled else req.done(str(h), None))
        job.failed.connect(lambda msg: None if req.cancelled else req.done(None, msg))
        job.finished.connect(self._next)
        self._job = job
        job.start()


class ModelPicker(QWidget):
    """Choose one model file (or diffusers folder). `expect` is "checkpoint" or "lokr"."""

    changed = Signal()  # the path changed (after the description was refreshed)
    described = Signal()  # description or hash updated (for tests and the screenshot script)

    def __init__(
        self,
        role: str,
        hashes: HashQueue,
        expect: str = "checkpoint",
        placeholder: str = "",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.role = role
        self.expect = expect
        self._hashes = hashes
        self._path: Path | None = None
        self.info: CheckpointInfo | None = None
        self.problem: str | None = None
        self.short_hash: str | None = None
        self._hash_request: HashRequest | None = None

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(3)
        row = QHBoxLayout()
        row.setSpacing(6)
        self.role_label = QLabel(role)
        self.role_label.setObjectName("pickerRole")
        self.role_label.setMinimumWidth(64)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder or ("LoKr .safetensors" if expect == "lokr" else
                                                     "SDXL .safetensors file or diffusers folder"))  # fmt: skip
        self.edit.editingFinished.connect(self._edited)
        self.browse = QPushButton("Browse…")
        if expect == "checkpoint":
            menu = QMenu(self.browse)
            menu.addAction("Safetensors file…", self.choose_file)
            menu.addAction("Diffusers folder…", self.choose_folder)
            self.browse.setMenu(menu)
        else:
            self.browse.clicked.connect(self.choose_file)
        row.addWidget(self.role_label)
        row.addWidget(self.edit, 1)
        row.addWidget(self.browse)
        lay.addLayout(row)
        self.info_label = QLabel()
        self.info_label.setObjectName("pickerInfo")
        self.info_label.setWordWrap(True)
        self.info_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.info_label.setContentsMargins(70, 0, 0, 0)
        lay.addWidget(self.info_label)
        self._render()

    # ---- value --------------------------------------------------------------------------------------------
    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def ok(self) -> bool:
        return self._path is not None and self.problem is None

    def set_path(self, path: Path | str | None) -> None:
        path = Path(path).expanduser() if path not in (None, "") else None
        self.edit.setText(str(path) if path else "")
        self._path = path  # described again even when unchanged: the file may have been replaced or repaired
        self._describe()
        self.changed.emit()

    def _edited(self) -> None:
        text = self.edit.text().strip()
        new = Path(text).expanduser() if text else None
        if new != self._path:
            self.set_path(new)

    def choose_file(self) -> None:
        """Browse for a .safetensors file (the Browse button's handler, or its menu's first entry)."""
        start = str(self._path.parent) if self._path else ""
        open_path_dialog(self, "open_file", f"Choose {self.role}", start, self.set_path,
                         "Safetensors (*.safetensors)")  # fmt: skip

    def choose_folder(self) -> None:
        start = str(self._path.parent) if self._path else ""
        open_path_dialog(self, "folder", f"Choose {self.role} (diffusers folder)", start, self.set_path)

    # ---- description --------------------------------------------------------------------------------------
    def _describe(self) -> None:
        if self._hash_request is not None:
            self._hash_request.cancel()  # the hash of the file shown before is no longer wanted
            self._hash_request = None
        self.info, self.problem, self.short_hash = None, None, None
        if self._path is None:
            self._render()
            return
        try:
            info = describe_checkpoint(self._path)
        except KxlError as exc:
            self.problem = str(exc)
        except OSError as exc:
            self.problem = f"{self._path}: cannot read ({exc.strerror or exc})"
        else:
            self.info = info
            self.problem = self._problem_of(info)
            if self.problem is None and self._path.is_file():
                self.short_hash = HASH_PENDING
                self._hash_request = self._hashes.request(self._path, self._hashed)
        self._render()

    def _problem_of(self, info: CheckpointInfo) -> str | None:
        if self.expect == "lokr":
            return None if info.kind == "lokr" else f"{info.path}: not a LoKr file ({info.kind})"
        if info.kind == "lokr":
            return f"{info.path}: is a LoKr, not a checkpoint (bake it in the LoKr section)"
        return f"{info.path}: {info.problem}" if info.problem else None

    def _hashed(self, value: str | None, error: str | None) -> None:
        self._hash_request = None
        self.short_hash = value or "—"
        self._render()
        if error:
            self.info_label.setToolTip(error)

    def _render(self) -> None:
        if self._path is None:
            self.info_label.setText("not chosen")
            self.info_label.setProperty("state", "empty")
        elif self.problem:
            self.info_label.setText(self.problem)
            self.info_label.setProperty("state", "problem")
        else:
            info = self.info
            assert info is not None
            parts = [KIND_TEXT.get(info.kind, info.kind)]
            if info.arch:
                parts.append(info.arch)
            parts += [info.dtype, f"{info.tensor_count:,} tensors", format_bytes(info.size_bytes)]
            if self.short_hash:
                parts.append(
                    self.short_hash if self.short_hash == HASH_PENDING else f"hash {self.short_hash}"
                )
            self.info_label.setText("  ·  ".join(parts))
            self.info_label.setProperty("state", "ok")
        self.info_label.setToolTip(str(self._path) if self._path else "")
        # A dynamic property only restyles after a re-polish.
        self.info_label.style().unpolish(self.info_label)
        self.info_label.style().polish(self.info_label)
        self.described.emit()
