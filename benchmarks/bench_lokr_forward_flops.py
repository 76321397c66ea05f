"""FLOPs of one full-size SDXL UNet training step: bare UNet vs lycoris' two-op LoKr forward vs our one-op forward.

Usage:
  python benchmarks/bench_lokr_forward_flops.py [--size 1024] [--batch 1] [--tokens 77]

Everything runs on the meta device (no memory, no GPU): the real SDXL UNet config from resources/sdxl, the
kohaku-xl-delta network preset (LoKr full matrix + norms on the UNet), torch.utils.flop_counter.FlopCounterMode.
Rows:
  bare UNet, forward          the UNet alone
  bare UNet, fwd+bwd (full)   every UNet weight trainable: fwd + dL/dx + dL/dW, the floor for training every layer
  lycoris two-op, fwd+bwd     lycoris-lora's forward: base op + a second op with ΔW, per adapted layer
  fused one-op, fwd+bwd       trainer_core.train.fused_forward: one op with W + ΔW
--checkpointing (the recipe's setting) adds the recomputed forward to every fwd+bwd row. Norm FLOPs are not counted by
FlopCounterMode; the norm's second pass is memory traffic, not matmul FLOPs. Target: fused / two-op <= 0.65.
"""

from __future__ import annotations

import argparse
import sys


def _count(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels (latent = size / 8)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=77, help="text tokens (225-token captions give 231)")
    ap.add_argument("--checkpointing", action="store_true", help="as the recipe trains")
    args = ap.parse_args(argv)

    import torch

    from trainer_core.models.architectures import build_empty_components
    from trainer_core.train.config import load_preset
    from trainer_core.train.fused_forward import install_fused_forward, uninstall_fused_forward
    from trainer_core.train.networks import create_networks

    unet = build_empty_components("sdxl-base", "meta")["unet"]
    unet.requires_grad_(False)
    if args.checkpointing:
        unet.enable_gradient_checkpointing()
        unet.train()
    b, lat = args.batch, args.size // 8
    dev = "meta"
    x = torch.empty(b, 4, lat, lat, device=dev)
    t = torch.empty(b, dtype=torch.long, device=dev)
    cond = {
        "encoder_hidden_states": torch.empty(b, args.tokens, 2048, device=dev),
        "added_cond_kwargs": {"text_embeds": torch.empty(b, 1280, device=dev),
                              "time_ids": torch.empty(b, 6, device=dev)},
    }  # fmt: skip

    def forward():
        with torch.no_grad():
            unet(x, t, **cond)

    def step():
        unet(x, t, **cond).sample.float().square().mean().backward()

    rows: list[tuple[str, int]] = [("bare UNet, forward", _count(forward))]
    unet.requires_grad_(True)
    rows.append(("bare UNet, fwd+bwd (full)", _count(step)))
    unet.requires_grad_(False)
    for p in unet.parameters():
        p.grad = None

    cfg = load_preset("kohaku-xl-delta").network
    nets = create_networks({"unet": unet}, cfg, device=dev, fused=False)
    net = nets.nets["unet"]
    rows.append(("lycoris two-op, forward", _count(forward)))
    rows.append(("lycoris two-op, fwd+bwd", _count(step)))
    res = install_fused_forward(net)
    rows.append(("fused one-op, forward", _count(forward)))
    rows.append(("fused one-op, fwd+bwd", _count(step)))
    uninstall_fused_forward(net)

    value = dict(rows)
    two, fused = value["lycoris two-op, fwd+bwd"], value["fused one-op, fwd+bwd"]
    ckpt = ", gradient checkpointing" if args.checkpointing else ""
    print(f"SDXL UNet, {args.size}x{args.size}, batch {b}, {args.tokens} tokens{ckpt}, kohaku-xl-delta preset "
          f"({res.lokr} LoKr + {res.norm} norm modules fused, {res.fallback} left on lycoris' forward)")  # fmt: skip
    print(f"{'':28} {'TFLOP':>8} {'/ bare fwd':>11} {'/ two-op':>9}")
    for name, flops in rows:
        ref = two if "bwd" in name else value["lycoris two-op, forward"]
        print(f"{name:28} {flops / 1e12:8.2f} {flops / value['bare UNet, forward']:11.2f} {flops / ref:9.3f}")
    ratio = fused / two
    print(f"fused / two-op (fwd+bwd): {ratio:.3f}  (target <= 0.65)")
    return 0 if ratio <= 0.65 else 1


if __name__ == "__main__":
    sys.exit(main())
