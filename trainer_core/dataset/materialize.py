"""`kxl dataset materialize`: turn a referenced dataset into the kohya folder a copy build of it would have written.

The result is byte for byte a copy build's (tested): every image copied out of its shard (checked against its
fingerprint on the way), `<id>.txt` captions written from `captions.jsonl` (which is where a referenced dataset
keeps them, edits from the Tags tab included), the copy build's manifest composed from the reference table,
`skipped.jsonl`, the sd-scripts config and `kxl-dataset.toml` without `image_mode`. Output paths come only from
the validated shards.json folder (`<repeats>_<name>`), the table's integer ids and its validated extensions;
no name read from a tar is ever a path.

Everything is written into a temp folder beside `out` and renamed at the end, so `out` is never a half-written
dataset; a failure or a cancel removes the temp folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import KxlError
from ..progress import Progress, ensure_progress
from .durable import write_new_file
from .image_refs import (
    SHARDS_FILE,
    check_shards,
    is_reference_dataset,
    iter_reference_records,
    load_ref_table,
    read_ref,
    read_shard_list,
)
from .sd_scripts_config import write_sd_scripts_config
from .stats import DATASET_FILE, MANIFEST_FILE, SD_SCRIPTS_FILE, SKIPPED_FILE, is_finished_dataset


def materialize_dataset(src: str | Path, out: str | Path, progress: Progress | None = None) -> int:
    """Write the kohya folder of referenced dataset `src` at `out` (new, or an empty folder); returns the number
    of images written. KxlError (naming the file) for a dataset that is not a finished referenced one, a bad
    manifest line, a missing or changed shard, or an output folder that is not empty."""
    import tomli_w
    import tomllib

    src, out = Path(src), Path(out)
    progress = ensure_progress(progress)
    if not is_reference_dataset(src):
        raise KxlError(f"not a referenced dataset (no {SHARDS_FILE})", path=src,
                       hint="only datasets built with --image-mode reference can be materialized")  # fmt: skip
    if not is_finished_dataset(src):
        raise KxlError("the dataset build is not finished", path=src, hint="resume the build first")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KxlError("output folder exists and is not empty", path=out, hint="choose a new or empty folder")
    try:
        info = tomllib.loads((src / DATASET_FILE).read_text(encoding="utf-8"))
        output = info["output"]
        subfolder, repeats = str(output["folder"]), int(output["repeats"])
    except (OSError, UnicodeError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise KxlError(f"not a readable build description ({exc})", path=src / DATASET_FILE) from None
    output.pop("image_mode", None)  # a copy build's options have no image_mode
    shard_list = read_shard_list(src)
    table = load_ref_table(src, shard_list)
    paths = [s.path for s in shard_list.shards]
    # the posts of a missing shard are listed from the table, only when one is missing
    check_shards(shard_list.by_path(), ((paths[k], pid) for k, pid in
                                        zip(table["shard"].tolist(), table["id"].tolist(), strict=True)))  # fmt: skip
    total = int(info.get("summary", {}).get("written", 0))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.materialize-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / subfolder).mkdir()  # a copy build makes its image folder even when no image is written
        progress.stage(f"Writing {total:,} images")
        done = 0
        with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as manifest:
            for r in iter_reference_records(src, records=True):
                folder = tmp / r.subset
                if r.subset != subfolder:
                    folder.mkdir(exist_ok=True)
                write_new_file(str(folder / r.name), read_ref(r.ref), direct=True)
                write_new_file(
                    str(folder / (r.name[: r.name.rfind(".")] + ".txt")), r.caption.encode("utf-8")
                )
                r.record.pop("ref")
                manifest.write(json.dumps(r.record, ensure_ascii=False) + "\n")
                done += 1
                if done % 256 == 0:
                    progress.update(done, max(done, total))
                    progress.check_cancelled()
        progress.update(done, done)
        shutil.copyfile(src / SKIPPED_FILE, tmp / SKIPPED_FILE)
        write_sd_scripts_config(tmp, SD_SCRIPTS_FILE, subfolder, repeats, "free some space and run it again")
        (tmp / DATASET_FILE).write_text(tomli_w.dumps(info), encoding="utf-8")  # last, as a build writes it
        if hasattr(os, "sync"):
            os.sync()  # the files are on disk before the folder gets its final name
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise KxlError(f"cannot write the materialized dataset ({exc.strerror or exc})", path=out) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return done


__all__ = ["materialize_dataset"]
