#!/usr/bin/env bash
# Build the one-folder desktop app with PyInstaller: dist/kohaku-xl-workbench/ holding `kxl-gui` (the app), a
# `kxl` link (the command line), the .desktop entry, the icon and install-desktop-entry.sh. No network is used:
# everything comes from the Python environment the build runs in (install the project there first).
#
#   pip install pyinstaller && packaging/build_app.sh [DIST_DIR]     (default DIST_DIR: dist/)
#   PYTHON=/path/to/python packaging/build_app.sh                    build with another environment
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON:-python3}"
dist="${1:-$repo/dist}"
work="$repo/build/pyinstaller"
app="$dist/kohaku-xl-workbench"

if ! "$python" -c "import PyInstaller" 2>/dev/null; then
    echo "error: PyInstaller is not installed for $python; run: $python -m pip install pyinstaller" >&2
    exit 2
fi
if ! "$python" -c "import trainer_core, kxl_gui" 2>/dev/null; then
    echo "error: the project is not importable from $python; run: $python -m pip install -e $repo" >&2
    exit 2
fi

# The PNG icon is rendered from the SVG so the two never disagree.
"$python" "$here/render_icon.py" --out "$here/kohaku-xl-workbench.png" >/dev/null

start=$(date +%s)
# HF_HUB_OFFLINE: import-time checks must not try the network on a build box; hooks import torch, whose
# deprecation warnings would bury the real warnings.
HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore::DeprecationWarning "$python" -m PyInstaller --noconfirm --log-level WARN \
    --distpath "$dist" --workpath "$work" "$here/kxl-gui.spec"

ln -sf kxl-gui "$app/kxl"
cp "$here/kxl-gui.desktop" "$here/kohaku-xl-workbench.png" "$here/install-desktop-entry.sh" "$app/"
chmod +x "$app/install-desktop-entry.sh"

echo "built $app in $(( $(date +%s) - start )) s, $(du -sh "$app" | cut -f1)"
echo "run it:    $app/kxl-gui      (command line: $app/kxl --help)"
echo "check it:  packaging/check_built_app.sh $app"
