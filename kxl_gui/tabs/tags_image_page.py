"""The Tags tab's "Image" page: the selected picture with its bucket crop drawn on it, its caption as category
chips with the `|||` split, and "what the trainer sees": caption variants from the trainer's own
`process_caption` with the card's settings for a chosen seed, epoch and sample index.

The page shows what the tab hands it (`show_entry`, `show_picture`); the picture itself is decoded by the tab in
a worker.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QFrame, QGridLayout, QLabel, QScrollArea, QSpinBox, QVBoxLayout, QWidget

from trainer_core.tags.caption_processing import card_caption_processing
from trainer_core.tags.dataset_index import DatasetIndex, split_caption
from trainer_core.tags.preview import BucketPreview, bucket_preview, caption_variants
from trainer_core.tags.vocabulary import TagVocabulary

from ..widgets.caption_chips import ChipView
from ..widgets.tags_image_view import CropImageView

DEFAULT_VARIANTS = 4


def _section(text: str) -> QLabel:
    label = QLabel(text)
    label.setObjectName("cardTitle")
    label.setStyleSheet("QLabel { color: #f2c15e; font-weight: 600; font-size: 10.5pt; padding-top: 6px; }")
    return label


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class ImagePage(QScrollArea):
    tag_clicked = Signal(str)  # a caption chip was clicked: the tab adds it to the search

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.index: DatasetIndex | None = None
        self.entry: int | None = None
        self.bucket: BucketPreview | None = None
        self.variant_texts: list[str] = []
        content = QWidget()
        content.setObjectName("pageContent")
        lay = QVBoxLayout(content)
        lay.setContentsMargins(10, 8, 10, 10)
        lay.setSpacing(6)
        self.image_view = CropImageView()
        self.image_view.setMinimumHeight(260)
        self.bucket_label = QLabel("")
        self.bucket_label.setWordWrap(True)
        self.file_label = QLabel("")
        self.file_label.setObjectName("pathLabel")
        self.file_label.setWordWrap(True)
        self.file_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.chips = ChipView()
        self.chips.tag_clicked.connect(self.tag_clicked)
        self.split_label = QLabel("")
        self.split_label.setObjectName("muted")
        self.split_label.setWordWrap(True)
        self.variants_label = QLabel("")
        self.variants_label.setTextFormat(Qt.TextFormat.RichText)
        self.variants_label.setWordWrap(True)
        self.variants_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.variants_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        note = QLabel(
            "Card settings: shuffle after |||, tag dropout 10%, fixed head never moves. "
            "Dropped tags are struck through."
        )
        note.setObjectName("muted")
        note.setWordWrap(True)
        lay.addWidget(self.image_view)
        lay.addWidget(self.bucket_label)
        lay.addWidget(self.file_label)
        lay.addWidget(_section("Caption"))
        lay.addWidget(self.chips)
        lay.addWidget(self.split_label)
        lay.addWidget(_section("What the trainer sees"))
        lay.addLayout(self._build_controls())
        lay.addWidget(note)
        lay.addWidget(self.variants_label)
        lay.addStretch(1)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setWidget(content)

    def _build_controls(self) -> QGridLayout:
        # Two rows of two: in one row the four spin boxes (sized for 10-digit seeds) made the page wider than
        # the side panel, and every wrapped label and chip row below was cut off at the right edge.
        controls = QGridLayout()
        controls.setHorizontalSpacing(8)
        self.seed_spin = self._spin("seed", 0, 2**31 - 1, 0)
        self.epoch_spin = self._spin("epoch", 1, 100000, 1)
        self.index_spin = self._spin("sample", 0, 10**9, 0)
        self.n_spin = self._spin("variants", 1, 32, DEFAULT_VARIANTS)
        rows = (("Seed", self.seed_spin), ("Epoch", self.epoch_spin), ("Sample index", self.index_spin),
                ("Variants", self.n_spin))  # fmt: skip
        for i, (label, spin) in enumerate(rows):
            text = QLabel(label)
            text.setObjectName("muted")
            controls.addWidget(text, i // 2, (i % 2) * 2)
            controls.addWidget(spin, i // 2, (i % 2) * 2 + 1)
        controls.setColumnStretch(1, 1)
        controls.setColumnStretch(3, 1)
        return controls

    def _spin(self, name: str, low: int, high: int, value: int) -> QSpinBox:
        spin = QSpinBox()
        spin.setObjectName(f"{name}Spin")
        spin.setRange(low, high)
        spin.setValue(value)
        spin.valueChanged.connect(lambda _v: self.show_variants())
        return spin

    # ---- showing an entry ---------------------------------------------------------------------------------
    def show_entry(self, index: DatasetIndex, entry: int, vocabulary: TagVocabulary | None) -> None:
        """Show this entry's caption, variants and bucket; the picture follows with `show_picture`."""
        self.index, self.entry = index, entry
        e = index.entries[entry]
        self.file_label.setText(f"{e.image} · repeats {e.repeats} · sample index {entry}")
        self.index_spin.setValue(entry)  # the trainer's sample index of this image: its variants follow
        self.show_caption(vocabulary)
        self.show_variants()
        self.show_bucket()
        self.image_view.set_image(None, None, None, "loading…")

    def show_caption(self, vocabulary: TagVocabulary | None) -> None:
        if self.index is None or self.entry is None:
            return
        caption = self.index.entries[self.entry].caption
        parts = split_caption(caption)
        self.chips.set_caption(parts.fixed, parts.flex, parts.suffix, parts.has_separator, vocabulary)
        if not caption:
            self.split_label.setText("Empty caption: the trainer sees an empty text for this image.")
        elif parts.has_separator:
            self.split_label.setText(
                f"{len(parts.fixed)} fixed tag(s) before |||, {len(parts.flex)} shuffled after it"
                + (f", {len(parts.suffix)} fixed at the end" if parts.suffix else "")
            )
        else:
            self.split_label.setText("No ||| in this caption: every tag is shuffled and may be dropped.")

    def show_variants(self) -> None:
        if self.index is None or self.entry is None:
            return
        variants = caption_variants(
            self.index.entries[self.entry].caption,
            card_caption_processing(),
            seed=self.seed_spin.value(),
            epoch=self.epoch_spin.value(),
            index=self.index_spin.value(),
            n=self.n_spin.value(),
        )
        self.variant_texts = [v.processed.text for v in variants]
        rows = []
        for v in variants:
            p = v.processed
            fixed = ", ".join(_esc(t) for t in p.fixed)
            rest = ", ".join(_esc(t) for t in p.flex + p.suffix)
            text = f'<span style="color:#f2c15e">{fixed}</span>' + (", " if fixed and rest else "") + rest
            dropped = "".join(f' <s style="color:#6b6862">{_esc(t)}</s>' for t in p.dropped_tags)
            rows.append(
                f'<p style="margin:0 0 6px 0"><span style="color:#8f8b83">epoch {v.epoch}</span>&nbsp; '
                f"{text or '<i>(empty)</i>'}{dropped}</p>"
            )
        self.variants_label.setText("".join(rows))

    def show_bucket(self) -> None:
        """The bucket of the entry's size (unknown until the statistics or the picture tell it)."""
        size = (
            self.index.entries[self.entry].size if self.index is not None and self.entry is not None else None
        )
        self.bucket = bucket_preview(size) if size is not None else None
        self.bucket_label.setText(
            self.bucket.label if self.bucket is not None else "bucket: image size not known yet"
        )

    def show_picture(self, qimg: QImage, original: tuple[int, int]) -> None:
        """The decoded picture of the shown entry, with its crop (its size is known from now on)."""
        assert self.index is not None and self.entry is not None
        e = self.index.entries[self.entry]
        if e.size is None:
            e.width, e.height = original
        self.show_bucket()
        crop = self.bucket.crop_in_image if self.bucket is not None else None
        self.image_view.set_image(QPixmap.fromImage(qimg), e.size, crop)

    def show_failed(self, message: str) -> None:
        self.image_view.set_image(None, None, None, message)

    def clear(self, why: str) -> None:
        self.entry = None
        self.bucket = None
        self.chips.set_caption([], [], [], False, None)
        self.variant_texts = []
        self.variants_label.setText("")
        self.bucket_label.setText("")
        self.file_label.setText("")
        self.split_label.setText(why)
        self.image_view.set_image(None, None, None, "No image selected")
