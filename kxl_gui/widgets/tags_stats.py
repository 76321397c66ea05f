"""Dataset-wide panel of the Tags tab: warnings, a sortable/filterable tag frequency table (category, posts,
popularity guidance), the category breakdown, rating/quality/year counts, the bucket histogram and the list of
file problems. pyqtgraph is imported when the first statistics arrive, not at app start (the Tags tab's
statistics job imports it first, off the GUI thread).

The table holds thousands of rows (one per distinct tag), so nothing per row happens on the GUI thread beyond
handing out prepared values: `stat_rows` formats every cell and sort key (the Tags tab calls it in its statistics
job), sorting is one Python sort in the model, and column widths come from the longest text of each column
instead of Qt measuring every cell (ResizeToContents asked the model ~120,000 times: 0.3 s per update).
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from trainer_core.tags.dataset_stats import DatasetStats, TagStat
from trainer_core.tags.popularity import PopularityLevel, popularity_guidance

from ..kit.palette import KIND_COLORS, LEVEL_COLORS

TAG_COLUMNS = ("Tag", "Images", "Category", "Posts", "Guidance")
SORT_ROLE = Qt.ItemDataRole.UserRole + 2
_RIGHT = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)


@dataclass(frozen=True, slots=True)
class StatRow:
    """One tag's row, every cell already formatted (no Qt: built in a worker)."""

    tag: TagStat
    texts: tuple[str, str, str, str, str]
    keys: tuple  # sort key per column
    tooltip: str | None
    kind_color: str
    level_color: str | None


def stat_rows(tags: list[TagStat]) -> list[StatRow]:
    rows = []
    for t in tags:
        guidance = popularity_guidance(t.vocab_count) if t.vocab_count is not None else None
        texts = (
            t.text,
            f"{t.images:,}",
            t.kind.value,
            f"{t.vocab_count:,}" if t.vocab_count is not None else "",
            _short_guidance(guidance.level) if guidance else "",
        )
        keys = (t.text, t.images, t.kind.value, t.vocab_count or -1, guidance.level if guidance else -1)
        tooltip = f"{t.vocab_count:,} posts: {guidance.label}" if guidance is not None else None
        level = LEVEL_COLORS[guidance.level] if guidance is not None else None
        rows.append(StatRow(t, texts, keys, tooltip, KIND_COLORS[t.kind], level))
    return rows


class TagStatsModel(QAbstractTableModel):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[StatRow] = []
        self._sort: tuple[int, Qt.SortOrder] = (1, Qt.SortOrder.DescendingOrder)

    @property
    def tags(self) -> list[TagStat]:
        return [r.tag for r in self.rows]

    def tag_at(self, row: int) -> TagStat:
        return self.rows[row].tag

    def set_tags(self, tags: list[TagStat], rows: list[StatRow] | None = None) -> None:
        rows = stat_rows(tags) if rows is None else rows
        self.beginResetModel()
        self.rows = self._sorted(rows, *self._sort)
        self.endResetModel()

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        self._sort = (column, order)
        self.layoutAboutToBeChanged.emit()
        self.rows = self._sorted(self.rows, column, order)
        self.layoutChanged.emit()

    @staticmethod
    def _sorted(rows: list[StatRow], column: int, order: Qt.SortOrder) -> list[StatRow]:
        # Stable: ties keep the statistics' order (most frequent first).
        return sorted(rows, key=lambda r: r.keys[column], reverse=order == Qt.SortOrder.DescendingOrder)

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return len(TAG_COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> object:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return TAG_COLUMNS[section]
        return None

    def data(
        self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole
    ) -> object:
        if not index.isValid():
            return None
        r = self.rows[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return r.texts[col]
        if role == Qt.ItemDataRole.ToolTipRole:
            return r.tooltip
        if role == SORT_ROLE:
            return r.keys[col]
        if role == Qt.ItemDataRole.ForegroundRole:
            if col in (0, 2):
                return QColor(r.kind_color)
            if col == 4 and r.level_color is not None:
                return QColor(r.level_color)
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (1, 3):
            return _RIGHT
        return None

    def widest_texts(self) -> list[str]:
        """The longest text of each column (with its title), for sizing columns without measuring every cell."""
        return [max((r.texts[c] for r in self.rows), key=len, default="") for c in range(len(TAG_COLUMNS))]


class _FilterOnlyProxy(QSortFilterProxyModel):
    """Filters by tag text; sorting is handed to the source model (one Python sort instead of a comparison
    call into Python per pair of rows)."""

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        source = self.sourceModel()
        if column >= 0 and source is not None:
            source.sort(column, order)


class DatasetStatsView(QWidget):
    tag_activated = Signal(str)  # double-click on a tag row: filter the grid by it

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 8, 8, 8)
        self.summary = QLabel("Open a dataset to see its statistics.")
        self.summary.setWordWrap(True)
        self.warnings = QLabel("")
        self.warnings.setObjectName("inlineError")
        self.warnings.setWordWrap(True)
        self.warnings.hide()
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter tags…")
        self.filter_edit.setClearButtonEnabled(True)
        self.model = TagStatsModel(self)
        self.proxy = _FilterOnlyProxy(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.proxy.setFilterKeyColumn(0)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.filter_edit.textChanged.connect(self.proxy.setFilterFixedString)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(1, Qt.SortOrder.DescendingOrder)
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        # app.qss styles QTableWidget only; without this the alternate rows of a QTableView come out light.
        self.table.setStyleSheet(
            "QTableView { background: #25282d; alternate-background-color: #2a2d32; border: none;"
            " selection-background-color: #4a3b1c; selection-color: #f4efe6; }"
        )
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 8)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.doubleClicked.connect(self._activated)
        self.breakdown = QLabel("")
        self.breakdown.setWordWrap(True)
        self.breakdown.setTextFormat(Qt.TextFormat.RichText)
        self.problems = QListWidget()
        self.problems.setMaximumHeight(90)
        self.problems.hide()

        top = QWidget()
        top_lay = QVBoxLayout(top)
        top_lay.setContentsMargins(0, 0, 0, 0)
        top_lay.addWidget(self.filter_edit)
        top_lay.addWidget(self.table)
        self.plot_holder = QWidget()
        self.plot_layout = QVBoxLayout(self.plot_holder)
        self.plot_layout.setContentsMargins(0, 0, 0, 0)
        self.plot = None
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(top)
        self.splitter.addWidget(self.plot_holder)
        self.splitter.setSizes([380, 200])
        lay.addWidget(self.summary)
        lay.addWidget(self.warnings)
        lay.addWidget(self.breakdown)
        lay.addWidget(self.splitter, 1)
        lay.addWidget(self.problems)
        self.stats: DatasetStats | None = None

    def set_busy(self, text: str) -> None:
        self.summary.setText(text)

    def set_stats(self, stats: DatasetStats, problems: list[str], rows: list[StatRow] | None = None) -> None:
        """Show `stats`; `rows` = `stat_rows(stats.tags)` when the caller prepared them off the GUI thread."""
        self.stats = stats
        self.summary.setText(
            f"<b>{stats.images:,}</b> images · <b>{stats.samples_per_epoch:,}</b> samples per epoch (repeats "
            f"counted) · <b>{len(stats.tags):,}</b> distinct tags · <b>{len(stats.buckets)}</b> buckets used"
        )
        self.warnings.setText("\n".join(f"⚠ {w}" for w in stats.warnings))
        self.warnings.setVisible(bool(stats.warnings))
        self.model.set_tags(stats.tags, rows)
        self._fit_columns()
        kinds = " ".join(
            f'<span style="color:{KIND_COLORS[k]}">{k.value}</span> {d:,}/{o:,}'
            for k, (d, o) in sorted(stats.kinds.items(), key=lambda kv: -kv[1][1])
        )
        counters = "<br>".join(
            f"<b>{title}</b>: " + ", ".join(f"{k} {v:,}" for k, v in counter.most_common())
            for title, counter in (
                ("rating", stats.ratings),
                ("quality", stats.qualities),
                ("year", stats.years),
            )
        )
        self.breakdown.setText(f"<b>categories</b> (tags/occurrences): {kinds}<br>{counters}")
        self.problems.clear()
        self.problems.addItems(problems[:2000])
        self.problems.setVisible(bool(problems))
        self._draw_buckets(stats)

    def _draw_buckets(self, stats: DatasetStats) -> None:
        import pyqtgraph as pg

        if self.plot is None:
            self.plot = pg.PlotWidget(background="#1d1f23")
            self.plot.setMinimumHeight(150)
            self.plot.setLabel("left", "samples / epoch")
            self.plot.setTitle("Aspect buckets (wide ← → tall)", color="#a9a59c", size="9pt")
            self.plot.setMouseEnabled(x=True, y=False)
            self.plot.hideButtons()
            self.plot_layout.addWidget(self.plot)
        self.plot.clear()
        # Order by aspect ratio so the histogram reads as a distribution of shapes.
        items = sorted(stats.buckets.items(), key=lambda kv: kv[0][0] / kv[0][1], reverse=True)
        self.bucket_bars = items
        if not items:
            return
        xs = list(range(len(items)))
        heights = [n for _, n in items]
        self.plot.addItem(pg.BarGraphItem(x=xs, height=heights, width=0.8, brush="#e0a33a", pen=None))
        axis = self.plot.getAxis("bottom")
        step = max(1, -(-len(items) // 6))  # at most ~6 labels: "1344x768" is wide
        axis.setTicks([[(i, f"{w}x{h}") for i, ((w, h), _) in enumerate(items) if i % step == 0]])
        self.plot.setXRange(-0.6, len(items) - 0.4, padding=0)
        self.plot.setYRange(0, max(heights) * 1.1, padding=0)

    def _fit_columns(self) -> None:
        metrics = self.table.fontMetrics()
        header_metrics = self.table.horizontalHeader().fontMetrics()
        for col, text in enumerate(self.model.widest_texts()):
            if col == 0:
                continue  # the tag column stretches
            title = header_metrics.horizontalAdvance(TAG_COLUMNS[col]) + 14  # room for the sort arrow
            self.table.setColumnWidth(col, max(metrics.horizontalAdvance(text), title) + 18)

    def _activated(self, index: QModelIndex) -> None:
        source = self.proxy.mapToSource(index)
        if source.isValid():
            self.tag_activated.emit(self.model.tag_at(source.row()).text)


def _short_guidance(level: PopularityLevel) -> str:
    return {
        PopularityLevel.SHOULD_WORK: "should work",
        PopularityLevel.MAY_WORK: "emphasis 1.5-2.5",
        PopularityLevel.UNLIKELY: "unlikely",
    }[level]
