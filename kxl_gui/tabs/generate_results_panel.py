"""Generate tab's results column: the picture shown large, the session's gallery, and the selected picture's
parameters (A1111 infotext) with "Use these parameters"."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QFrame, QGridLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

from trainer_core.generate.infotext import parse_infotext

from ..widgets.generate_gallery import GalleryView

EMPTY_TEXT = "Generated images appear here.\nDrop a PNG from A1111 or this app to restore its settings."


class ResultsPanel(QWidget):
    seed_shown = Signal(
        object
    )  # int, may exceed 32 bits: the seed of the picture now shown, for "reuse seed"
    use_parameters = Signal(str)  # the shown picture's infotext, when the user asks to use it

    def __init__(self) -> None:
        super().__init__()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 0, 0, 0)
        self.preview = QLabel(EMPTY_TEXT)
        self.preview.setObjectName("muted")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setMinimumHeight(260)
        self.preview.setFrameShape(QFrame.Shape.StyledPanel)
        lay.addWidget(self.preview, 3)
        self.gallery = GalleryView()
        self.gallery.image_selected.connect(self.show_image)
        lay.addWidget(self.gallery, 2)
        self.params_view = QPlainTextEdit()
        self.params_view.setReadOnly(True)
        self.params_view.setPlaceholderText("parameters of the selected image")
        self.params_view.setFixedHeight(110)
        lay.addWidget(self.params_view)
        self.use_parameters_button = QPushButton("Use these parameters")
        self.use_parameters_button.clicked.connect(self._use_shown_parameters)
        grid = QGridLayout()
        grid.addWidget(self.use_parameters_button, 0, 0)
        self.output_label = QLabel("")
        self.output_label.setObjectName("pathLabel")
        grid.addWidget(self.output_label, 0, 1)
        lay.addLayout(grid)

    def show_image(self, _path, infotext: str, qimage) -> None:
        if qimage is not None:
            pix = QPixmap.fromImage(qimage)
            self.preview.setPixmap(pix.scaled(self.preview.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                              Qt.TransformationMode.SmoothTransformation))  # fmt: skip
        self.params_view.setPlainText(infotext)
        seed = parse_infotext(infotext).get("Seed")
        if seed and seed.isdigit():
            self.seed_shown.emit(int(seed))

    def _use_shown_parameters(self) -> None:
        self.use_parameters.emit(self.params_view.toPlainText())
