#!/usr/bin/env bash
# Check a built app (packaging/build_app.sh): the GUI starts offscreen and shows its main window, the `kxl`
# command answers, and the bundle runs `-m` modules as the trainer launch needs. Kept out of the pytest run
# because it needs a build (minutes). Exit 0 = all good; prints the start time.
# --full also runs the recipe on a small demo with the bundle alone: demo init, dataset build, merge with revert,
# a 2-step training with 2 CPU processes (accelerate DDP started by the bundle itself), LoKr generation (~1 min).
#
#   packaging/check_built_app.sh [--full] [APP_DIR]      (default APP_DIR: dist/kohaku-xl-workbench)
set -euo pipefail

full=0
if [ "${1:-}" = "--full" ]; then
    full=1
    shift
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
app="${1:-$repo/dist/kohaku-xl-workbench}"
exe="$app/kxl-gui"
if [ ! -x "$exe" ]; then
    echo "FAIL: $exe not found; build it with packaging/build_app.sh" >&2
    exit 1
fi

# A throw-away data dir: the check must not touch the user's settings or create a demo in their home.
data="$(mktemp -d)"
trap 'rm -rf "$data"' EXIT
export KXL_DATA_DIR="$data" QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1
fail=0

# 1. The window opens: kxl_gui.app prints `KXL_WINDOW_SHOWN <seconds since t0>` once it is exposed, then quits.
t0="$(python3 -c 'import time; print(time.time())' 2>/dev/null || date +%s.%N)"
out="$(KXL_GUI_EXIT_WHEN_SHOWN="$t0" timeout 120 "$exe" 2>&1)" || true
shown="$(printf '%s\n' "$out" | grep -m1 '^KXL_WINDOW_SHOWN ' || true)"
if [ -n "$shown" ]; then
    echo "ok   main window shown after ${shown#KXL_WINDOW_SHOWN } s (cold start of the built app)"
else
    echo "FAIL the app did not report KXL_WINDOW_SHOWN; its output:" >&2
    printf '%s\n' "$out" | tail -20 >&2
    fail=1
fi

# 2. The command line (the `kxl` link) answers with the same version.
if version="$("$app/kxl" --version 2>&1)"; then
    echo "ok   kxl --version: $version"
else
    echo "FAIL kxl --version: $version" >&2
    fail=1
fi

# 3. Interpreter mode, used by the trainer launch: resources are found and torch imports inside the bundle.
probe='import torch, trainer_core.paths as p; print(p.resources_dir().is_dir(), torch.__version__)'
if result="$("$exe" -c "$probe" 2>&1)" && [[ "$result" == True* ]]; then
    echo "ok   interpreter mode (-c): resources found, torch $(echo "$result" | tail -1 | cut -d' ' -f2)"
else
    echo "FAIL interpreter mode: $result" >&2
    fail=1
fi
if help="$("$exe" -m accelerate.commands.launch --help 2>&1)" && [[ "$help" == *num_processes* ]]; then
    echo "ok   accelerate launch runs inside the bundle"
else
    echo "FAIL -m accelerate.commands.launch --help:" >&2
    printf '%s\n' "$help" | tail -5 >&2
    fail=1
fi

# 4. None of our tests or test data went into the bundle (third-party packages may carry their own).
ours="$(find "$app" \( -path '*/tests/conftest.py' -o -path '*/tests/core' -o -path '*/tests/gui' \) -print)"
if [ -n "$ours" ] || "$exe" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("tests") is None)'; then
    echo "FAIL the project's tests are in the bundle: ${ours:-importable as 'tests'}" >&2
    fail=1
else
    echo "ok   no project tests in the bundle"
fi

# 5. (--full) The recipe with nothing but the bundle; every artefact must appear.
if [ $full = 1 ]; then
    demo="$data/demo"
    models="$demo/models"
    step() {
        local what="$1"
        shift
        if log="$("$@" 2>&1)"; then
            echo "ok   $what"
        else
            echo "FAIL $what:" >&2
            printf '%s\n' "$log" | tail -15 >&2
            fail=1
        fi
    }
    step "kxl demo init" "$app/kxl" demo init "$demo" --posts 40
    step "kxl dataset build" "$app/kxl" dataset build --db "$demo/danbooru/danbooru2023.db" \
        --images "$demo/danbooru/images" --out "$demo/datasets/all" --preset all
    step "kxl merge (kohaku-xl-delta preset)" "$app/kxl" merge --preset kohaku-xl-delta \
        --a "$models/kxl-tiny-gamma-rev2.safetensors" --b "$models/kxl-tiny-beta7.safetensors" \
        --original "$models/kxl-tiny-sdxl-base.safetensors" --out "$models/delta-base.safetensors"
    step "kxl train (2 CPU processes, 2 steps)" "$app/kxl" train --preset tiny-demo --dataset "$demo/datasets/all" \
        --base "$models/delta-base.safetensors" --out "$demo/runs/check" --max-steps 2 --processes 2 --cpu
    lokr="$demo/runs/check/checkpoints/tiny-demo-lokr.safetensors"
    step "kxl generate with the LoKr" "$app/kxl" generate --model "$models/delta-base.safetensors" \
        --lokr "$lokr" --prompt "1girl, solo" --steps 2 --size 64x64 --seed 1 --out "$demo/outputs/check"
    for artefact in "$demo/datasets/all/kxl-dataset.toml" "$demo/datasets/all/sd-scripts-dataset.toml" \
        "$lokr" "$demo/outputs/check/00000-1.png"; do
        if [ ! -f "$artefact" ]; then
            echo "FAIL missing $artefact" >&2
            fail=1
        fi
    done
fi
echo "size $(du -sh "$app" | cut -f1)"
exit $fail
