#!/usr/bin/env bash
# Add Kohaku XL Workbench to the desktop menu of the current user (Linux, freedesktop.org menus).
# Run it from the built app folder (it sits beside kxl-gui) or give that folder: install-desktop-entry.sh [APP_DIR]
set -euo pipefail

app="$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")}" && pwd)"
if [ ! -x "$app/kxl-gui" ]; then
    echo "error: $app/kxl-gui not found; give the folder of the built app" >&2
    exit 2
fi
data="${XDG_DATA_HOME:-$HOME/.local/share}"
mkdir -p "$data/applications" "$data/icons/hicolor/256x256/apps"
cp "$app/kohaku-xl-workbench.png" "$data/icons/hicolor/256x256/apps/kohaku-xl-workbench.png"
# The shipped entry runs `kxl-gui` from PATH (pip install); point it at this build instead.
sed "s|^Exec=kxl-gui|Exec=\"$app/kxl-gui\"|" "$app/kxl-gui.desktop" > "$data/applications/kohaku-xl-workbench.desktop"
command -v update-desktop-database >/dev/null && update-desktop-database "$data/applications" || true
echo "installed $data/applications/kohaku-xl-workbench.desktop"
