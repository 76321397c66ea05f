"""Render the app icon (resources/icons/kxl.svg) to the 256 px PNG that the Linux .desktop entry and the
PyInstaller build use: desktop menus and file managers want a raster icon, and the SVG stays the one source.

    python packaging/render_icon.py [--size 256] [--out packaging/kohaku-xl-workbench.png]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ICON_NAME = "kohaku-xl-workbench"  # the .desktop entry's Icon= key


def render_icon(svg: Path, out: Path, size: int) -> Path:
    """Draw `svg` into a transparent size x size image with Qt's SVG renderer and save it as PNG."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no window is shown; works on a headless build box
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg}: not a valid SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(out), "PNG"):
        raise SystemExit(f"could not write {out}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--svg", type=Path, default=REPO / "resources" / "icons" / "kxl.svg")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=REPO / "packaging" / f"{ICON_NAME}.png")
    args = parser.parse_args()
    print(render_icon(args.svg, args.out, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
