"""The Dataset wizard's six pages as widgets (layout only): Source, Selection, Captions, Output, Run, Summary.

The tab (tabs/dataset.py) binds their fields to a `DatasetForm` and runs the jobs; nothing here reads the
engine or holds state beyond what the widgets show.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from trainer_core.dataset.preview import PreviewCaption

from ..kit.card import Card
from ..kit.job_progress import JobProgress, describe_event
from ..kit.palette import KIND_COLORS, KIND_LABELS, MUTED_COLOR, SEPARATOR_COLOR, color_of, kind_of_export_tag
from ..kit.path_row import PathRow
from ..state.dataset_form import PIXEL_BUDGETS, RATINGS
from ..widgets.dataset_range_table import RangeTable

STEPS = ("Source", "Selection", "Captions", "Output", "Run", "Summary")
QUALITY_CHOICES = (
    ("card: P95/85/75/50/25/10, none above id 7.0M", "card"),
    ("hakubooru: P90/75/60/45/30/10, none above id 7.5M", "hakubooru"),
    ("db: card cut points computed from this DB", "db"),
)
# Rich-text colours (a style sheet cannot reach spans inside a label's HTML).
OK_COLOR, PROBLEM_COLOR, PATH_COLOR = "#7fc8a9", "#f2b59b", "#8f8b83"
FORMAT_CHOICES = (("copy the shard bytes (no re-encode)", "copy"),
                  *((f"re-encode as {fmt}", fmt) for fmt in ("webp", "png", "jpg")))  # fmt: skip


def _muted(text: str) -> QLabel:
    label = QLabel(text)
    label.setObjectName("muted")
    label.setWordWrap(True)
    return label


def _row(*widgets: QWidget, stretch: bool = True) -> QHBoxLayout:
    lay = QHBoxLayout()
    for w in widgets:
        lay.addWidget(w)
    if stretch:
        lay.addStretch(1)
    return lay


class SourcePage(Card):
    def __init__(self) -> None:
        super().__init__("Source: metadata DB and images")
        intro = ("HakuBooru's danbooru2023.db and the danbooru2023 image shards (data-NXYZ.tar), "
                 "or a folder of <id>.<ext> files. Defaults to the open workspace.")  # fmt: skip
        self.body.addWidget(_muted(intro))
        form = QFormLayout()
        self.db_row = PathRow("open_file", "Metadata DB", "SQLite DB (*.db);;All (*)")
        self.images_row = PathRow("folder", "Images folder")
        form.addRow("Metadata DB", self.db_row)
        form.addRow("Images", self.images_row)
        self.body.addLayout(form)
        self.workspace_button = QPushButton("Use workspace")
        self.check_button = QPushButton("Check source")
        self.body.addLayout(_row(self.workspace_button, self.check_button))
        self.source_info = _muted("Not checked yet.")
        self.source_info.setTextFormat(Qt.TextFormat.RichText)
        self.body.addWidget(self.source_info)
        self.body.addStretch(1)

    def show_checked(self, counts: dict[str, int], images_text: str, cache_text: str) -> None:
        rows = "".join(
            f"<tr><td>{t}</td><td align='right'>&nbsp;&nbsp;{n:,}</td></tr>" for t, n in counts.items()
        )
        self.source_info.setText(
            f"<span style='color:{OK_COLOR}'>✔ HakuBooru schema OK</span><table>{rows}</table>"
            f"Images: {html.escape(images_text)}<br>{html.escape(cache_text)}"
        )

    def show_problem(self, text: str) -> None:
        self.source_info.setText(f"<span style='color:{PROBLEM_COLOR}'>{html.escape(text)}</span>")


class SelectionPage(Card):
    def __init__(self) -> None:
        super().__init__("Selection: id ranges, seed and filters")
        self.preset_combo = QComboBox()
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.body.addLayout(_row(QLabel("Preset"), self.preset_combo, QLabel("Seed"), self.seed_spin))
        self.range_table = RangeTable()
        self.body.addWidget(self.range_table)
        self.add_range_button = QPushButton("Add range")
        self.remove_range_button = QPushButton("Remove range")
        self.body.addLayout(_row(self.add_range_button, self.remove_range_button))

        grid = QGridLayout()
        self.skip_deleted = QCheckBox("Skip deleted posts")
        self.skip_banned = QCheckBox("Skip banned / gold-only (no file URL)")
        self.images_only = QCheckBox("Images only (no gif, mp4, webm, zip, swf)")
        for i, box in enumerate((self.skip_deleted, self.skip_banned, self.images_only)):
            grid.addWidget(box, 0, i)
        self.rating_boxes = [QCheckBox(name) for name in RATINGS]
        grid.addLayout(_row(QLabel("Ratings"), *self.rating_boxes), 1, 0, 1, 3)
        self.min_score = QSpinBox()
        self.min_fav = QSpinBox()
        for spin in (self.min_score, self.min_fav):
            spin.setRange(-1, 1_000_000)
            spin.setSpecialValueText("off")
        numbers = QFormLayout()
        numbers.addRow("Minimum score", self.min_score)
        numbers.addRow("Minimum favourites", self.min_fav)
        grid.addLayout(numbers, 2, 0)
        tags = QFormLayout()
        self.tags_any, self.tags_all, self.tags_none = QLineEdit(), QLineEdit(), QLineEdit()
        for edit, label in ((self.tags_any, "Any of tags"), (self.tags_all, "All of tags"),
                            (self.tags_none, "None of tags")):  # fmt: skip
            edit.setPlaceholderText("comma-separated, e.g. 1girl, long_hair")
            tags.addRow(label, edit)
        grid.addLayout(tags, 2, 1, 1, 2)
        self.body.addLayout(grid)
        self.estimate_label = QLabel("")
        self.estimate_label.setObjectName("bigFigure")
        self.body.addWidget(self.estimate_label)
        self.body.addStretch(1)


class CaptionsPage(Card):
    def __init__(self) -> None:
        super().__init__("Captions: HakuBooru format", fill=True)
        self.quality_combo = QComboBox()
        for label, key in QUALITY_CHOICES:
            self.quality_combo.addItem(label, key)
        self.body.addLayout(_row(QLabel("Quality tags"), self.quality_combo))
        shown = [k for k in KIND_LABELS if k.value != "unknown"]
        legend = QLabel(
            " ".join(f'<span style="color:{KIND_COLORS[k]}">■ {KIND_LABELS[k]}</span>' for k in shown)
        )
        legend.setTextFormat(Qt.TextFormat.RichText)
        self.body.addWidget(legend)
        self.preview = QTextBrowser()
        self.preview.setObjectName("captionPreview")
        self.preview.setOpenLinks(False)
        self.body.addWidget(self.preview, 1)

    def show_captions(self, items: list[PreviewCaption]) -> None:
        def span(parts: list[tuple[str, int]]) -> str:
            return ", ".join(
                f'<span style="color:{color_of(kind_of_export_tag(k, t))}">{html.escape(t)}</span>'
                for t, k in parts
            )

        blocks = [
            f'<p style="margin:0 0 8px 0"><span style="color:{MUTED_COLOR}">#{item.post_id}</span> '
            f'{span(item.keep)}, <b style="color:{SEPARATOR_COLOR}">|||</b>{span(item.rest)}</p>'
            for item in items
        ]
        self.preview.setHtml("".join(blocks) or "<i>No post matches the selection.</i>")


class OutputPage(Card):
    # a reference build is no kohya folder (no image, no .txt): the title says what the folder will hold
    TITLES = {"copy": "Output: kohya folder layout", "reference": "Output: captions and shard references"}

    def __init__(self) -> None:
        super().__init__(self.TITLES["copy"])
        form = QFormLayout()
        self.out_row = PathRow("folder", "Dataset folder")
        form.addRow("Dataset folder", self.out_row)
        # Copy or reference: a copy is a kohya folder any tool reads; a reference build writes no image and
        # trains here straight from the shards (1.2 TB less disk for the card's 3.6 M images).
        self.copy_radio = QRadioButton("Copy the images into the folder — for sd-scripts and other tools")
        self.reference_radio = QRadioButton("Reference them in the shards — train here straight from the shards, "
                                            "no copy")  # fmt: skip
        self.copy_radio.setToolTip("Every image and a .txt caption per image are written: a kohya folder")
        self.reference_radio.setToolTip(
            "Only the captions and a table of where each image is inside its shard are written. "
            "This app's trainer, Tags tab and pre-flight read the images from the shards; the shards must stay "
            "where they are. `kxl dataset materialize` makes a copy later."
        )
        self.mode_group = QButtonGroup(self)
        modes = QVBoxLayout()
        for radio in (self.copy_radio, self.reference_radio):
            self.mode_group.addButton(radio)
            modes.addWidget(radio)
        self.copy_radio.setChecked(True)
        form.addRow("Images", modes)
        self.repeats_spin = QSpinBox()
        self.repeats_spin.setRange(1, 1000)
        self.name_edit = QLineEdit()
        form.addRow("Repeats", self.repeats_spin)
        form.addRow("Name", self.name_edit)
        self.format_combo = QComboBox()
        for label, key in FORMAT_CHOICES:
            self.format_combo.addItem(label, key)
        form.addRow("Image format", self.format_combo)
        self.budget_combo = QComboBox()
        for label, value in PIXEL_BUDGETS:
            self.budget_combo.addItem(label, value)
        form.addRow("Pixel budget", self.budget_combo)
        self.workers_spin = QSpinBox()
        self.workers_spin.setRange(1, 64)
        form.addRow("Shards in parallel", self.workers_spin)
        self.reference_radio.toggled.connect(self._show_mode)
        self.body.addLayout(form)
        self.output_note = _muted("")
        self.body.addWidget(self.output_note)
        self.body.addStretch(1)

    @property
    def image_mode(self) -> str:
        return "reference" if self.reference_radio.isChecked() else "copy"

    def set_image_mode(self, mode: str) -> None:
        (self.reference_radio if mode == "reference" else self.copy_radio).setChecked(True)

    def _show_mode(self, reference: bool) -> None:
        # a reference build keeps the shard bytes as they are: re-encoding and a pixel budget do not apply
        self.format_combo.setEnabled(not reference)
        self.budget_combo.setEnabled(not reference)
        self.title.setText(self.TITLES["reference" if reference else "copy"])


def describe_export(event) -> str:
    return describe_event(event, "posts")


class RunPage(Card):
    def __init__(self) -> None:
        super().__init__("Run")
        self.run_summary = QLabel("")
        self.run_summary.setWordWrap(True)
        self.body.addWidget(self.run_summary)
        self.progress = JobProgress(describe_export)
        self.body.addWidget(self.progress)
        self.start_button = QPushButton("Start export")
        self.start_button.setObjectName("primaryButton")
        self.body.addLayout(_row(self.start_button))
        self.body.addStretch(1)


class SummaryPage(Card):
    def __init__(self) -> None:
        super().__init__("Summary")
        self.summary_label = QLabel("No dataset built yet.")
        self.summary_label.setWordWrap(True)
        self.body.addWidget(self.summary_label)
        self.charts_box = QHBoxLayout()
        self.body.addLayout(self.charts_box, 1)
        lower = QHBoxLayout()
        missing_box = QVBoxLayout()
        missing_box.addWidget(_muted("Skipped posts (missing or corrupt images)"))
        self.missing_list = QListWidget()
        self.missing_list.setMaximumHeight(140)
        missing_box.addWidget(self.missing_list)
        lower.addLayout(missing_box, 1)
        hand_offs = QVBoxLayout()
        hand_offs.addStretch(1)
        # What a user does next with the folder: look at its captions, train on it, or see the files.
        self.open_tags_button = QPushButton("Open in Tags")
        self.open_tags_button.setObjectName("primaryButton")
        self.open_tags_button.setToolTip("Browse the captions and tags of this dataset in the Tags tab")
        self.train_button = QPushButton("Use for training")
        self.train_button.setToolTip("Set this dataset as the Train tab's dataset")
        self.open_button = QPushButton("Open dataset folder")
        for button in (self.open_tags_button, self.train_button, self.open_button):
            button.setEnabled(False)  # until a build finished
            hand_offs.addWidget(button)
        lower.addLayout(hand_offs)
        self.body.addLayout(lower)
        self.charts: list[QWidget] = []
        self._pending_charts: list[tuple[str, dict[str, int], int]] = []

    def show_result(self, result) -> None:
        s = result.summary
        if getattr(result, "image_mode", "copy") == "reference":
            what = (f"<b>{s.written:,}</b> images referenced in their shards (none copied) of {s.selected:,} "
                    f"selected · {s.missing:,} missing · {s.corrupt:,} corrupt · {s.bytes_written / 2**20:,.1f} MiB "
                    "stay in the shards")  # fmt: skip
        else:
            what = (f"<b>{s.written:,}</b> images written of {s.selected:,} selected · {s.missing:,} missing · "
                    f"{s.corrupt:,} corrupt · {s.bytes_written / 2**20:,.1f} MiB")  # fmt: skip
        self.summary_label.setText(
            f"{what}<br><span style='color:{PATH_COLOR}'>{html.escape(str(result.out))}</span>"
        )
        for chart in self.charts:
            self.charts_box.removeWidget(chart)
            chart.deleteLater()
        self.charts = []
        # One chart per event-loop turn: each takes ~40 ms to build, all three at once would freeze the window.
        self._pending_charts = [
            ("Rating", s.per_rating, 3),
            ("Quality", s.per_quality, 5),
            ("Year", s.per_year, 4),
        ]
        self._add_next_chart()
        self.missing_list.clear()
        for pid in s.missing_ids[:1000]:
            self.missing_list.addItem(f"{pid}: image not found in the shards")
        for item in s.corrupt_items[:1000]:
            self.missing_list.addItem(f"{item['id']}: {item['reason']} ({item['shard']})")
        for err in s.shard_errors:
            self.missing_list.addItem(f"{err['shard']}: {err['reason']}")
        for button in (self.open_tags_button, self.train_button, self.open_button):
            button.setEnabled(True)

    def _add_next_chart(self) -> None:
        from ..widgets.dataset_charts import (
            CountChart,
        )  # pyqtgraph loads with the first summary, not at start

        if not self._pending_charts:
            return
        title, counts, stretch = self._pending_charts.pop(0)  # stretch: quality has the most bars
        chart = CountChart(title, counts)
        self.charts.append(chart)
        self.charts_box.addWidget(chart, stretch)
        if self._pending_charts:
            QTimer.singleShot(0, self, self._add_next_chart)
