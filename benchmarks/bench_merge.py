"""Merge benchmark at real SDXL size: the card's preset (0.5/0.5 + 4-embedding revert) on three 6.9 GB checkpoints.

Makes SDXL-shaped single files (the 2514 real keys and shapes, random fp16), then measures in the same run, with
the page cache dropped before each step (when run as root):
- baseline (the issue's): reading all three inputs once (`cat > /dev/null`) plus writing one output of the same
  size (`dd`, fsync);
- a stricter baseline: the same reads and write with `dd iflag=direct` / `oflag=direct` (no page cache), which is
  how the merge itself does its I/O where the file system allows (trainer_core/direct_io.py);
- the merge (`kxl merge --preset kohaku-xl-delta`, SHA-256 of every input included) in a child process: wall time,
  CPU time and peak RSS.
Targets: merge / baseline <= 1.5, peak RSS < 1.5 GB. The big files are removed afterwards.

    python benchmarks/bench_merge.py [--dir /tmp/kxl-bench-merge] [--keep]
Needs about 35 GB of free disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_checkpoint(path: Path, seed: int) -> int:
    """Write one input in a child process: this process must stay small, because Linux reports a child's peak
    RSS as at least its parent's size when it forked (the merge's RSS read 1.23 GiB instead of 0.63 GiB after
    this process had generated the inputs itself)."""
    code = f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(Path(__file__).parent)!r}]; " \
           f"from bench_merge import _write_checkpoint; _write_checkpoint({str(path)!r}, {seed})"  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)
    return path.stat().st_size


def _write_checkpoint(path: str, seed: int) -> None:
    import torch

    from trainer_core.models.architectures import sgm_shapes
    from trainer_core.models.safetensors_writer import PlannedTensor, StreamingWriter

    shapes = sgm_shapes("sdxl-base")
    # Tile one 256 MB random block (offset per file): content statistics do not change merge speed, and
    # generating 3.4 G fresh normals per file would dominate the benchmark's own run time.
    gen = torch.Generator().manual_seed(seed)
    block = torch.randn(128 * 2**20, generator=gen).to(torch.float16)
    entries = [PlannedTensor(k, "F16", s) for k, s in shapes.items()]
    size = block.numel()
    offset = seed * 9973
    with StreamingWriter(path, entries, {"modelspec.architecture": "stable-diffusion-xl-v1-base"}) as w:
        for e in w.order:
            n = 1
            for s in e.shape:
                n *= s
            start = offset % (size - n + 1)  # the largest SDXL tensor (63 M elements) fits in the block
            w.write(e.name, block[start : start + n].reshape(e.shape))
            offset += n + 7


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


CPU = {"user": 0.0, "sys": 0.0}  # CPU seconds of the last `timed` child


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of a child process (its CPU seconds land in CPU)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    CPU.update(user=usage.ru_utime, sys=usage.ru_stime)
    return wall, usage.ru_maxrss * 1024


def _cpu() -> str:
    return f"(cpu user {CPU['user']:.1f} s, sys {CPU['sys']:.1f} s)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/kxl-bench-merge"))
    ap.add_argument(
        "--keep", action="store_true", help="keep the inputs (a later run with --keep reuses them)"
    )
    args = ap.parse_args()
    d = args.dir
    d.mkdir(parents=True, exist_ok=True)
    names = {"gamma": 1, "beta": 2, "original": 3}
    paths = {n: d / f"{n}.safetensors" for n in names}
    t0 = time.monotonic()
    reuse = args.keep and all(p.is_file() for p in paths.values())
    sizes = {
        n: paths[n].stat().st_size if reuse else make_checkpoint(paths[n], seed) for n, seed in names.items()
    }
    print(f"{'reused' if reuse else 'made'} 3 SDXL-shaped checkpoints ({sizes['gamma'] / 1e9:.2f} GB each) "
          f"in {time.monotonic() - t0:.0f} s")  # fmt: skip
    out = d / "delta.safetensors"
    out.unlink(missing_ok=True)
    shutil.rmtree(d / "data", ignore_errors=True)  # no cached hashes: the merge hashes every input
    base_out = d / "baseline.bin"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KXL_DATA_DIR": str(d / "data")}
    cold = drop_caches()
    read_s, _ = timed(["sh", "-c", f"cat {' '.join(str(p) for p in paths.values())} > /dev/null"])
    read_cpu = _cpu()
    mib = sizes["gamma"] // 2**20
    write_s, _ = timed(
        ["dd", "if=/dev/zero", f"of={base_out}", "bs=1M", f"count={mib}", "conv=fsync", "status=none"]
    )
    write_cpu = _cpu()
    base_out.unlink()
    drop_caches()
    dread_s = 0.0
    for p in paths.values():
        dread_s += timed(["dd", f"if={p}", "of=/dev/null", "bs=64M", "iflag=direct", "status=none"])[0]
    dwrite_s, _ = timed(["dd", "if=/dev/zero", f"of={base_out}", "bs=64M", f"count={mib // 64}", "oflag=direct",
                         "conv=fsync", "status=none"])  # fmt: skip
    base_out.unlink()
    drop_caches()
    merge_cmd = [sys.executable, "-m", "trainer_core.cli", "merge", "--preset", "kohaku-xl-delta",
                 "--a", str(paths["gamma"]), "--b", str(paths["beta"]), "--original", str(paths["original"]),
                 "--out", str(out)]  # fmt: skip
    merge_s, rss = timed(merge_cmd, env)
    baseline = read_s + write_s
    direct = dread_s + dwrite_s
    print(f"page cache dropped between runs: {'yes' if cold else 'no (not root)'}")
    print(f"baseline: read 3 inputs {read_s:.1f} s {read_cpu} + write 1 output {write_s:.1f} s {write_cpu} "
          f"= {baseline:.1f} s")  # fmt: skip
    print(
        f"direct-I/O baseline: read 3 inputs {dread_s:.1f} s + write 1 output {dwrite_s:.1f} s = {direct:.1f} s"
    )
    print(f"merge (kohaku-xl-delta preset, hashing included): {merge_s:.1f} s {_cpu()}, "
          f"peak RSS {rss / 2**30:.2f} GiB")  # fmt: skip
    print(f"ratio merge/baseline: {merge_s / baseline:.2f} (target <= 1.5); merge/direct-I/O baseline: "
          f"{merge_s / direct:.2f}; RSS target < 1.5 GB: {'ok' if rss < 1.5e9 else 'MISSED'}")  # fmt: skip
    print(
        f"throughput: {(sum(sizes.values()) + out.stat().st_size) / merge_s / 2**20:.0f} MiB/s (inputs read + output written)"
    )
    if args.keep:
        out.unlink()
    else:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
