"""What the Tags tab runs in workers: indexing a dataset folder (with its undo journal), finding the workspace's
newest dataset, the tag vocabulary, the completion index, image sizes and statistics, a picture for the preview.

Workers never write the index the GUI shows: the statistics job reads image sizes into its own result
(`StatsResult.sizes`) and the GUI thread copies them into the entries when it arrives.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PySide6.QtGui import QImage

from trainer_core.errors import KxlError
from trainer_core.progress import Progress
from trainer_core.tags.dataset_index import (
    DatasetIndex,
    DatasetProblem,
    find_newest_dataset,
    open_dataset,
    read_image_header_size,
)
from trainer_core.tags.edit_journal import JournalInfo, last_edit
from trainer_core.tags.vocabulary import TagVocabulary

from ..jobs import quiet_gc
from ..widgets.tags_stats import stat_rows

PREVIEW_MAX_SIDE = 768


def load_preview(index: DatasetIndex, entry: int, progress: Progress) -> tuple[QImage, tuple[int, int]]:
    """The entry's picture scaled for the image page (from its file, or its shard in a referenced dataset)."""
    path = index.image_path(entry)
    progress.check_cancelled()
    try:
        with index.open_image(entry) as img:
            original = img.size
            img.draft("RGB", (PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
            img.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
            rgb = img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - shown in place of the picture, never a crash
        raise KxlError(f"image cannot be decoded ({type(exc).__name__}: {exc})", path=path) from None
    qimg = QImage(rgb.tobytes(), rgb.width, rgb.height, rgb.width * 3, QImage.Format.Format_RGB888).copy()
    return qimg, original


def load_vocabulary(db: Path | None, progress: Progress) -> TagVocabulary:
    from trainer_core.tags.preview import load_vocabulary

    with quiet_gc():  # long-lived, built from many small objects (see kxl_gui/jobs.py)
        if db is not None and db.is_file():
            try:
                return load_vocabulary(db, progress)
            except KxlError:
                pass  # a broken DB is reported by the Workspace page; the shipped tag list still gives categories
        return load_vocabulary(None, progress)


def build_completer(index: DatasetIndex, vocabulary: TagVocabulary | None, progress: Progress) -> object:
    from trainer_core.tags.completion import TagCompleter
    from trainer_core.tags.preview import dataset_tag_vocabulary

    progress.stage("building tag completion")
    with quiet_gc():  # long-lived, and built from many small objects (see kxl_gui/jobs.py)
        completer = TagCompleter(dataset_tag_vocabulary(index, vocabulary))
        # Anything the completer builds on first use is built here, not on the user's first keypress.
        completer.complete("a", limit=1)
    return completer


def index_dataset(path: Path, progress: Progress) -> tuple[DatasetIndex, JournalInfo | None]:
    index = open_dataset(path, progress)
    return index, last_edit(index.root)


def newest_to_open(datasets: Path, ws_root: Path, open_root: Path | None) -> Path | None:
    """The workspace's newest dataset, unless the open one is already inside the workspace (file walks: a worker)."""
    if open_root is not None and _is_inside(open_root, ws_root):
        return None
    return find_newest_dataset(datasets)


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


@dataclasses.dataclass
class StatsResult:
    """What the statistics job hands to the GUI thread. Image sizes it read from headers are here, keyed by entry
    position ((-1, -1) = unreadable, with a problem), never written into the shared index by the worker."""

    stats: object  # trainer_core.tags.dataset_stats.DatasetStats
    rows: list  # widgets.tags_stats.StatRow for the frequency table, prepared off the GUI thread
    sizes: dict[int, tuple[int, int]]
    problems: list[DatasetProblem]


class _SizedView:
    """The index as `compute_stats` reads it, with the sizes the job read filled in: copies of the entries that
    changed, the others shared read-only."""

    def __init__(
        self, index: DatasetIndex, sizes: dict[int, tuple[int, int]], problems: list[DatasetProblem]
    ):
        self.tag_image_counts = index.tag_image_counts
        self.tag_texts = index.tag_texts
        self.entries = list(index.entries)
        for i, (w, h) in sizes.items():
            self.entries[i] = dataclasses.replace(self.entries[i], width=w, height=h)
        self.problems = list(index.problems) + problems

    def __len__(self) -> int:
        return len(self.entries)


def read_missing_sizes(
    index: DatasetIndex, progress: Progress
) -> tuple[dict[int, tuple[int, int]], list[DatasetProblem]]:
    """Read the image headers of entries whose size is unknown; returns the sizes and the problems found, and
    writes nothing into `index` (the GUI thread owns it)."""
    todo = [i for i, e in enumerate(index.entries) if e.width == 0 or e.height == 0]
    sizes: dict[int, tuple[int, int]] = {}
    problems: list[DatasetProblem] = []
    if todo:
        progress.stage(f"reading {len(todo):,} image sizes")
    for done, i in enumerate(todo, 1):
        size = read_image_header_size(index.image_path(i), index.refs.get(i))
        if isinstance(size, str):
            sizes[i] = (-1, -1)  # remembered as unreadable: never retried
            problems.append(DatasetProblem(index.entries[i].image, size))
        else:
            sizes[i] = size
        if done % 256 == 0 or done == len(todo):
            progress.update(done, len(todo))
            progress.check_cancelled()
    return sizes, problems


def compute_stats(index: DatasetIndex, vocabulary: TagVocabulary | None, progress: Progress) -> StatsResult:
    from trainer_core.tags.dataset_stats import compute_stats

    sizes, problems = read_missing_sizes(index, progress)
    progress.stage("computing statistics")
    with quiet_gc():
        stats = compute_stats(_SizedView(index, sizes, problems), vocabulary)  # type: ignore[arg-type]
        rows = stat_rows(stats.tags)
        import pyqtgraph  # noqa: F401  (the bucket chart's first import: 0.3 s, here rather than on the GUI thread)
    return StatsResult(stats, rows, sizes, problems)


def with_journal(root: Path, result: object) -> tuple[object, JournalInfo | None]:
    """An edit's (or undo's) result with the dataset's newest undoable edit, both read in the worker."""
    return result, last_edit(root)
