"""Run start of the trainer at scale (#14.5): dataset scan + bucket plan on a synthetic 1 M-image dataset.

    python benchmarks/bench_train_startup.py [--images 1000000] [--keep DIR]

Bars: run start <= 30 s and <= 1 GiB RSS per rank.

The dataset is what the dataset builder writes, minus pixels: one `1_synthetic/` folder with 1 M `<id>.webp` files
(sparse: the right byte count, no disk blocks, no image data: the start must not need a header), 1 M captions
(~40 danbooru-like tags each) and `manifest.jsonl` (file, width, height, bytes, ...) written last, like the
builder does. It is generated into a temp folder (a few minutes: 2 M files) and removed at the end unless --keep
names a folder to reuse.

Each case runs in a fresh process, timing what `Trainer._run` does before loading the model: the scan
(dataset_scan.scan_for_training), the bucket plan, the epoch's batch order for this rank and, on rank 0, the tag
frequency for the LoKr metadata (counted in a background thread while the models load, so listed apart from the
start; stored with the scan, so only a changed dataset counts again). RSS: peak (ru_maxrss) and at the end, split into private memory and file pages
mapped from the scan cache (those are shared by all ranks of a machine).

  cold      first start on this dataset: list + stat every file, sizes from the manifest, read every caption,
            store the scan cache; the plan and tag frequency computed and stored
  warm      a resume / new run on the unchanged dataset: list + stat, then the stored scan, plan and tag counts
  changed   100 captions edited since: the stored scan reused file by file, 100 captions re-read
  added     then 100 images added (not in the manifest): their headers read, everything else reused
  rank 1    another rank: waits for rank 0's message, maps rank 0's stored scan and plan, no file listing
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1 << 30


def _generate(root: Path, n: int) -> None:
    """1_synthetic/<id>.webp (sparse) + <id>.txt, manifest.jsonl last."""
    import numpy as np

    if (root / "manifest.jsonl").is_file():
        return
    sub = root / "1_synthetic"
    sub.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tags = rng.zipf(1.25, size=(n, 40)) % 30_000  # a long-tailed vocabulary, like danbooru's
    aspect = np.exp(rng.normal(0, 0.35, n))
    area = rng.uniform(0.5e6, 6e6, n)
    widths = np.clip(np.sqrt(area * aspect), 200, 8000).astype(np.int64)
    heights = np.clip(np.sqrt(area / aspect), 200, 8000).astype(np.int64)
    nbytes = rng.integers(80_000, 3_000_000, n)
    t0 = time.perf_counter()
    lines = []
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for i in range(n):
        pid = 1_000_000 + i * 3
        fd = os.open(sub / f"{pid}.webp", flags, 0o644)
        os.ftruncate(fd, int(nbytes[i]))
        os.close(fd)
        caption = "1girl, solo ||| " + ", ".join(f"tag_{t}" for t in tags[i])
        fd = os.open(sub / f"{pid}.txt", flags, 0o644)
        os.write(fd, caption.encode())
        os.close(fd)
        lines.append(json.dumps({"id": pid, "file": f"1_synthetic/{pid}.webp", "caption": caption,
                                 "rating": "general", "quality": "best quality", "year": "year 2022",
                                 "width": int(widths[i]), "height": int(heights[i]),
                                 "shard": f"data-{pid % 1000:04d}.tar", "bytes": int(nbytes[i])}))  # fmt: skip
        if i and i % 200_000 == 0:
            print(f"  {i:,} files written ({time.perf_counter() - t0:.0f} s)", flush=True)
    time.sleep(0.05)  # the manifest is written after every image, as the builder does
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"  {n:,} images + captions + manifest in {time.perf_counter() - t0:.0f} s", flush=True)


def _rss() -> dict:
    """RSS now and its peak (VmHWM: this process image only; ru_maxrss would include the parent's, inherited)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    out["peak_rss"] = out["VmHWM"]
    return out


def _case(args: argparse.Namespace) -> None:
    """One start, in this (fresh) process; prints a JSON line."""
    from trainer_core.train.config import DatasetConfig
    from trainer_core.train.data import BucketPlan, tag_frequency
    from trainer_core.train.dataset_scan import scan_for_training

    base = _rss()
    cfg = DatasetConfig()  # the card's buckets
    batch, world, accum = 4, 2, 16
    rank = 1 if args.case == "rank1" else 0
    msg = json.loads(args.message) if args.message else None
    t = {}
    t0 = time.perf_counter()
    plans = []
    table = scan_for_training(args.root, args.run_dir, rank=rank, world=world, broadcast=lambda m: msg or m,
                              prepare=lambda s: plans.append(BucketPlan(s, cfg, batch)))  # fmt: skip
    t["scan (+ plan on rank 0)"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    plan = plans[0] if plans else BucketPlan(table, cfg, batch)
    spe = plan.steps_per_epoch(world, accum)
    t["plan"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    order = plan.rank_micro_batches(0, 1337, world, rank, accum)
    t["epoch order"] = time.perf_counter() - t1
    total = time.perf_counter() - t0
    if rank == 0:  # the trainer counts tags in a thread while the models load: not part of the start
        t1 = time.perf_counter()
        freq = tag_frequency(table)
        t["tag frequency"] = time.perf_counter() - t1
        assert freq
    print(json.dumps({"case": args.case, "times": t, "total": total, "report": table.report,
                      "images": len(table), "entries": len(plan.entries), "steps_per_epoch": spe,
                      "micro_batches": len(order), "rss": _rss(), "rss_before": base,
                      "message": {"folder": str(table.cache_dir), "fingerprint": table.fingerprint,
                                  "digest": table.content_digest()}}))  # fmt: skip


def _child(case: str, root: Path, run_dir: Path, message: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--case", case, "--root", str(root), "--run-dir", str(run_dir)]
    if message:
        cmd += ["--message", json.dumps(message)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-4000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, default=None, help="generate into / reuse this folder and keep it")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--message", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        _case(args)
        return 0

    tmp = None
    base = args.keep if args.keep is not None else Path(tmp := tempfile.mkdtemp(prefix="kxl-bench-startup-"))
    root, run_dir = base / "dataset", base / "run"
    try:
        print(
            f"generating {args.images:,} images (sparse) + captions + manifest.jsonl under {root}", flush=True
        )
        _generate(root, args.images)
        shutil.rmtree(root / ".kxl-cache", ignore_errors=True)  # a first start
        shutil.rmtree(run_dir, ignore_errors=True)
        for stale in (root / "1_synthetic").glob("added*"):  # left by an earlier run with --keep
            stale.unlink()
        rows = [_child("cold", root, run_dir)]
        rows.append(_child("warm", root, run_dir))
        sub = root / "1_synthetic"
        for pid in range(1_000_000, 1_000_000 + 300, 3):
            (sub / f"{pid}.txt").write_text("1girl, solo ||| edited, tag_1", encoding="utf-8")
        rows.append(_child("changed", root, run_dir))
        from PIL import Image

        for k in range(100):  # new images the manifest does not know: their headers are read
            Image.new("RGB", (64 + k, 64)).save(sub / f"added{k}.png")
            (sub / f"added{k}.txt").write_text("1girl, solo ||| added", encoding="utf-8")
        rows.append(_child("added", root, run_dir))
        rows.append(_child("rank1", root, run_dir, message=rows[-1]["message"]))
        print(f"\n{rows[0]['images']:,} images, {rows[0]['entries']:,} entries, {rows[0]['steps_per_epoch']:,} "
              "steps per epoch (batch 4, 2 ranks, accumulation 16, the card's 97 buckets)\n")  # fmt: skip
        print("| start | scan (+plan r0) | plan | epoch order | **start total** | tag counts (r0, background) | "
              "peak RSS | RSS at end (private + cache pages) | sizes from | captions |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|---|---|---|")
        for r in rows:
            t, rep, rss = r["times"], r["report"], r["rss"]
            sizes = ", ".join(f"{k[6:]} {rep[k]:,}" for k in ("sizes_cached", "sizes_manifest", "sizes_header")
                              if rep.get(k))  # fmt: skip
            caps = ", ".join(
                f"{k[9:]} {rep[k]:,}" for k in ("captions_cached", "captions_read") if rep.get(k)
            )
            tf = f"{t['tag frequency']:.2f} s" if "tag frequency" in t else "-"
            print(f"| {r['case']} ({rep.get('cache')} cache) | {t['scan (+ plan on rank 0)']:.2f} s | "
                  f"{t['plan']:.2f} s | {t['epoch order']:.2f} s | **{r['total']:.2f} s** | {tf} | ", end="")  # fmt: skip
            print(f"{rss['peak_rss'] / GIB:.2f} GiB | {rss['VmRSS'] / GIB:.2f} GiB "
                  f"({rss['RssAnon'] / GIB:.2f} + {rss['RssFile'] / GIB:.2f}) | {sizes or 'stored scan'} | "
                  f"{caps or 'stored scan'} |")  # fmt: skip
        worst_t = max(r["total"] for r in rows)
        worst_m = max(r["rss"]["peak_rss"] for r in rows)
        print(f"\nbars: start <= 30 s: {'met' if worst_t <= 30 else 'NOT met'} (worst {worst_t:.1f} s); "
              f"<= 1 GiB RSS per rank: {'met' if worst_m <= GIB else 'NOT met'} (worst peak {worst_m / GIB:.2f} GiB)")  # fmt: skip
        print(f"interpreter + numpy before the start: {rows[0]['rss_before']['VmRSS'] / 2**20:.0f} MiB RSS")
    finally:
        if tmp is not None:
            print("removing the synthetic dataset ...", flush=True)
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
