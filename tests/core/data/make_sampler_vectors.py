"""Make sampler_vectors.json: what A1111's own sampling code produces for an analytic model. Not run in CI.

The oracle is the real code, imported from checkouts outside this project: k-diffusion (the samplers and the
CompVisDenoiser) and AUTOMATIC1111/stable-diffusion-webui v1.10.1 (sd_schedulers, sd_samplers_extra's Restart,
sd_samplers_timesteps_impl's DDIM/PLMS/UniPC, rng.ImageRNG, and the sampler option table read from
sd_samplers_kdiffusion.py). What A1111 does around them (KDiffusionSampler / CompVisSampler .sample and
.sample_img2img: schedule, discard_next_to_last_sigma, initial noise, Brownian trees per image seed, img2img step
split, the ImageRNG stream behind k-diffusion's torch.randn_like) is re-stated below in a few lines each, the
parts of A1111 that cannot be imported without its whole app.

How it was run (2 CPU cores, a minute):

    pip install --no-deps --target /tmp/kdiff k-diffusion==0.1.1.post1 trampoline
    git -C <a stable-diffusion-webui clone> archive v1.10.1 modules | tar -x -C /tmp/a1111
    python tests/core/data/make_sampler_vectors.py --k-diffusion /tmp/kdiff --a1111 /tmp/a1111 \\
        --out tests/core/data/sampler_vectors.json

tests/core/test_generate_samplers.py recomputes every case with A1111Scheduler and the same analytic model, the
same seeds and the same img2img start, and compares the final latents.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

SHAPE = (2, 4, 4, 4)  # two images: per-image noise (generators, Brownian trees) shows up as a batch effect
SEEDS = [1234, 98765]
SCHEDULES = ["Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
             "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"]  # fmt: skip


_ACP = np.cumprod(1.0 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)  # SDXL's alphas_cumprod, float64


def analytic_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth, nonlinear stand-in for the UNet, a function of its input and (fractional) timestep only.

    It is the epsilon of a model whose clean-image guess is x0(x, t) = 0.8 tanh(1.5 x) + small t-dependent terms,
    so that every sampler ends on unit-scale latents. test_generate_samplers.py imports it from here.
    """
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1, 1)
    a = torch.from_numpy(np.interp(t.double().numpy(), np.arange(1000), _ACP)).to(torch.float32)
    x0 = (
        0.8 * torch.tanh(1.5 * x)
        + 0.15 * torch.cos(t / 97.0) * torch.roll(x, 1, dims=-1)
        + 0.05 * torch.sin(t / 40.0)
    )
    return (x - a.sqrt() * x0) / (1 - a).sqrt()


def hires_init() -> torch.Tensor:
    """The img2img start latent (stands for the upscaled first pass); the test imports it too."""
    n = int(np.prod(SHAPE))
    return torch.sin(torch.arange(n, dtype=torch.float32) * 0.37).reshape(SHAPE) * 1.3


# ------------------------------------------------------------------------------------------ imports


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _package(name: str, path: Path | None = None) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)] if path else []
    sys.modules[name] = module
    return module


def import_oracle(kdiff_root: Path, a1111_root: Path) -> types.SimpleNamespace:
    # k-diffusion: skip its package __init__ (it imports training code), stub what sampling/utils import but
    # never use here (torchdiffeq for log_likelihood, torchvision for image helpers).
    _package("k_diffusion", kdiff_root / "k_diffusion")
    for stub in ("torchdiffeq", "torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        sys.modules.setdefault(stub, _package(stub))
    sys.modules["torchdiffeq"].odeint = None
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    k_sampling = _load("k_diffusion.sampling", kdiff_root / "k_diffusion" / "sampling.py")
    k_external = _load("k_diffusion.external", kdiff_root / "k_diffusion" / "external.py")
    sys.modules["k_diffusion"].sampling, sys.modules["k_diffusion"].external = k_sampling, k_external

    # A1111: `modules` as a namespace over the checkout, with the few app modules its samplers touch stubbed.
    modules = _package("modules", a1111_root / "modules")
    opts = types.SimpleNamespace(beta_dist_alpha=0.6, beta_dist_beta=0.6, uni_pc_variant="bh1",
                                 uni_pc_skip_type="time_uniform", uni_pc_order=3, uni_pc_lower_order_final=True,
                                 randn_source="GPU", eta_noise_seed_delta=0)  # fmt: skip
    shared = types.ModuleType("modules.shared")
    shared.opts, shared.sd_model, shared.device = (
        opts,
        types.SimpleNamespace(is_sdxl=True),
        torch.device("cpu"),
    )
    devices = types.ModuleType("modules.devices")
    devices.device, devices.cpu = torch.device("cpu"), torch.device("cpu")
    torch_utils = types.ModuleType("modules.torch_utils")
    torch_utils.float64 = lambda _t: torch.float64
    for name, module in (("shared", shared), ("devices", devices), ("torch_utils", torch_utils)):
        sys.modules[f"modules.{name}"] = module
        setattr(modules, name, module)
    _package("modules.models", a1111_root / "modules" / "models")
    _package("modules.models.diffusion", a1111_root / "modules" / "models" / "diffusion")
    uni_pc_pkg = _package("modules.models.diffusion.uni_pc", a1111_root / "modules/models/diffusion/uni_pc")
    uni_pc_pkg.uni_pc = _load("modules.models.diffusion.uni_pc.uni_pc",
                              a1111_root / "modules/models/diffusion/uni_pc/uni_pc.py")  # fmt: skip
    root = a1111_root / "modules"
    return types.SimpleNamespace(
        k_sampling=k_sampling,
        k_external=k_external,
        schedulers=_load("modules.sd_schedulers", root / "sd_schedulers.py"),
        extra=_load("modules.sd_samplers_extra", root / "sd_samplers_extra.py"),
        timesteps_impl=_load("modules.sd_samplers_timesteps_impl", root / "sd_samplers_timesteps_impl.py"),
        rng=_load("modules.rng", root / "rng.py"),
        options=kdiffusion_sampler_table(root / "sd_samplers_kdiffusion.py"),
    )


def kdiffusion_sampler_table(path: Path) -> dict[str, tuple[str, dict]]:
    """A1111's samplers_k_diffusion list (label -> (function name, options)), read from the source."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "samplers_k_diffusion":
            table = {}
            for entry in node.value.elts:
                label, func, _aliases, options = entry.elts
                name = func.value if isinstance(func, ast.Constant) else func.attr
                table[label.value] = (name, ast.literal_eval(options))
            return table
    raise SystemExit(f"no samplers_k_diffusion in {path}")


# ------------------------------------------------------------------------------------------ A1111 harness


class FakeSdModel:
    """What A1111's samplers read from shared.sd_model: alphas_cumprod (sgm's float64 schedule, stored float32)
    and apply_model, here the analytic function (read as epsilon, or as v for a v-prediction case)."""

    def __init__(self, v_prediction: bool = False):
        betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
        self.alphas_cumprod = torch.asarray(np.cumprod(1.0 - betas), dtype=torch.float32)
        self.v_prediction = v_prediction
        self.calls: list[float] = []

    def apply_model(self, x, t, cond=None):
        self.calls.append(float(torch.as_tensor(t).reshape(-1)[0]))
        return analytic_eps(x, t)


class ImageRngTorch:
    """A1111's TorchHijack: k-diffusion's torch.randn_like draws the next latent of the per-image ImageRNG."""

    def __init__(self, rng):
        self.rng = rng

    def __getattr__(self, item):
        return self.randn_like if item == "randn_like" else getattr(torch, item)

    def randn_like(self, _x):
        return self.rng.next()


def a1111_sigmas(oracle, denoiser, sampler: str, schedule: str, steps: int) -> torch.Tensor:
    """KDiffusionSampler.get_sigmas for a sampler and schedule label."""
    _func, options = oracle.options[sampler]
    discard = options.get("discard_next_to_last_sigma", False)
    steps += 1 if discard else 0
    name = options.get("scheduler") if schedule == "Automatic" else schedule
    scheduler = oracle.schedulers.schedulers_map.get(name)
    if scheduler is None or scheduler.function is None:
        sigmas = denoiser.get_sigmas(steps)
    else:
        kwargs = {"sigma_min": denoiser.sigmas[0].item(), "sigma_max": denoiser.sigmas[-1].item()}
        if scheduler.need_inner_model:
            kwargs["inner_model"] = denoiser
        sigmas = scheduler.function(n=steps, **kwargs, device="cpu")
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas.cpu()


def run_kdiffusion(oracle, case: dict) -> tuple[torch.Tensor, list[float]]:
    sd_model = FakeSdModel(case.get("prediction") == "v")
    wrap = oracle.k_external.CompVisVDenoiser if sd_model.v_prediction else oracle.k_external.CompVisDenoiser
    denoiser = wrap(sd_model)
    func_name, options = oracle.options[case["sampler"]]
    func = (
        oracle.extra.restart_sampler
        if func_name == "restart_sampler"
        else getattr(oracle.k_sampling, func_name)
    )
    rng = oracle.rng.ImageRNG(SHAPE[1:], SEEDS)
    hires = case.get("hires")
    if hires is None:
        steps = case["steps"]
        sigmas = a1111_sigmas(oracle, denoiser, case["sampler"], case["schedule"], steps)
        x = rng.next() * sigmas[0]
        sched = sigmas
    else:
        # setup_img2img_steps with explicit hires steps: a schedule of int(H / d) steps, its last H run
        h, d = hires["steps"], hires["denoise"]
        steps, t_enc = int(h / min(d, 0.999)), h - 1
        sigmas = a1111_sigmas(oracle, denoiser, case["sampler"], case["schedule"], steps)
        sched = sigmas[steps - t_enc - 1 :]
        x = hires_init() + rng.next() * sched[0]
    oracle.k_sampling.torch = ImageRngTorch(rng)
    kwargs = {}
    if options.get("brownian_noise"):  # create_noise_sampler: one tree per image seed over the full schedule
        lo, hi = sigmas[sigmas > 0].min(), sigmas.max()
        kwargs["noise_sampler"] = oracle.k_sampling.BrownianTreeNoiseSampler(x, lo, hi, seed=SEEDS)
    if options.get("solver_type") == "heun":
        kwargs["solver_type"] = "heun"
    # KDiffusionSampler.sample / sample_img2img hand each function the arguments it declares
    parameters = inspect.signature(func).parameters
    if "eta" in parameters:
        kwargs["eta"] = 1.0  # opts.eta_ancestral
    if "sigma_min" in parameters:
        if hires is None:
            kwargs["sigma_min"], kwargs["sigma_max"] = denoiser.sigmas[0].item(), denoiser.sigmas[-1].item()
        else:
            kwargs["sigma_min"], kwargs["sigma_max"] = sched[-2], sched[0]
    if "n" in parameters:
        kwargs["n"] = steps if hires is None else len(sched) - 1
    if "sigmas" in parameters:
        kwargs["sigmas"] = sched
    out = func(denoiser, x, extra_args={"cond": None}, disable=True, **kwargs)
    oracle.k_sampling.torch = torch
    return out, sd_model.calls


def run_timesteps(oracle, case: dict) -> tuple[torch.Tensor, list[float]]:
    sd_model = FakeSdModel(case.get("prediction") == "v")

    def model(x, t, **_):
        out = sd_model.apply_model(x, t)
        if not sd_model.v_prediction:
            return out
        ts = torch.as_tensor(t).to(torch.int)  # CompVisTimestepsVDenoiser: eps from v at the integer timestep
        acp = sd_model.alphas_cumprod[ts].reshape(-1, 1, 1, 1)
        return acp.sqrt() * out + (1 - acp).sqrt() * x

    model.inner_model = types.SimpleNamespace(inner_model=sd_model)
    name = case["sampler"].lower()
    func = getattr(oracle.timesteps_impl, name)
    rng = oracle.rng.ImageRNG(SHAPE[1:], SEEDS)

    def timesteps_for(steps):  # CompVisSampler.get_timesteps
        return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)

    kwargs = {"extra_args": {}, "disable": True, "callback": lambda _d: None}
    hires = case.get("hires")
    if hires is None:
        timesteps = timesteps_for(case["steps"])
        x = rng.next()
    else:
        h, d = hires["steps"], hires["denoise"]
        steps, t_enc = int(h / min(d, 0.999)), h - 1
        all_timesteps = timesteps_for(steps)
        timesteps = all_timesteps[:t_enc]
        acp = sd_model.alphas_cumprod[all_timesteps[t_enc]]
        x = hires_init() * acp.sqrt() + rng.next() * (1 - acp).sqrt()
        if name == "unipc":
            kwargs["is_img2img"] = True
    if name == "ddim":
        kwargs["eta"] = 0.0
    oracle.k_sampling.torch = ImageRngTorch(rng)
    out = func(model, x, timesteps, **kwargs)
    oracle.k_sampling.torch = torch
    return out, sd_model.calls


# ------------------------------------------------------------------------------------------ cases


def cases(options: dict) -> list[dict]:
    out = []
    ours = ["Euler a", "Euler", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a",
            "DPM++ 3M SDE", "DPM2", "DPM2 a", "LMS", "Heun", "Restart", "DPM fast"]  # fmt: skip
    for sampler in ours:
        assert sampler in options, sampler
        out.append({"sampler": sampler, "schedule": "Automatic", "steps": 8})
    out += [{"sampler": "Restart", "schedule": "Automatic", "steps": 21},  # one restart segment
            {"sampler": "Restart", "schedule": "Automatic", "steps": 36},  # two
            {"sampler": "DPM++ 2M", "schedule": "Automatic", "steps": 20},
            {"sampler": "DPM++ 2M SDE", "schedule": "Karras", "steps": 20},
            {"sampler": "DPM fast", "schedule": "Automatic", "steps": 9},  # a multiple of 3: orders end 2, 1
            {"sampler": "DPM fast", "schedule": "Align Your Steps", "steps": 7}]  # fmt: skip
    for schedule in SCHEDULES:
        out.append({"sampler": "Euler", "schedule": schedule, "steps": 9})
    for sampler in ("DPM++ 2M", "DPM++ 2M SDE", "DPM2", "DPM++ 3M SDE", "Euler a", "LMS"):
        for schedule in ("Uniform", "Karras", "Exponential", "SGM Uniform", "Beta"):
            out.append({"sampler": sampler, "schedule": schedule, "steps": 7})
    for sampler in ("DDIM", "PLMS", "UniPC"):
        for steps in (3, 7, 10, 28):
            out.append({"sampler": sampler, "schedule": "Automatic", "steps": steps})
    hires = [("Euler a", 7, 0.55), ("DPM++ SDE", 5, 0.5), ("DPM2", 6, 0.4), ("DPM++ 3M SDE", 6, 0.6),
             ("DPM++ 2S a", 4, 0.7), ("Restart", 20, 0.3), ("DPM++ 2M", 10, 1.0), ("DDIM", 7, 0.55),
             ("PLMS", 6, 0.5), ("UniPC", 8, 0.6), ("DPM fast", 5, 0.5)]  # fmt: skip
    for sampler, steps, denoise in hires:
        out.append({"sampler": sampler, "schedule": "Automatic", "steps": steps,
                    "hires": {"steps": steps, "denoise": denoise}})  # fmt: skip
    out += [{"sampler": "Euler", "schedule": "Karras", "steps": 6, "prediction": "v"},
            {"sampler": "DPM++ 2M", "schedule": "Automatic", "steps": 6, "prediction": "v"},
            {"sampler": "DDIM", "schedule": "Automatic", "steps": 6, "prediction": "v"}]  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--k-diffusion", type=Path, required=True, help="folder holding the k_diffusion package"
    )
    parser.add_argument("--a1111", type=Path, required=True, help="stable-diffusion-webui v1.10.1 root")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    oracle = import_oracle(args.k_diffusion, args.a1111)
    results = []
    for case in cases(oracle.options):
        timestep_sampler = case["sampler"] in ("DDIM", "PLMS", "UniPC")
        out, calls = (run_timesteps if timestep_sampler else run_kdiffusion)(oracle, case)
        results.append({**case, "model_timesteps": [round(t, 4) for t in calls],
                        "latent": [float(f"{v:.7g}") for v in out.flatten().tolist()]})  # fmt: skip
        print(f"{case['sampler']:18} {case['schedule']:16} {case['steps']:3} calls {len(calls):3}"
              f"{'  hires' if case.get('hires') else ''}{'  v' if case.get('prediction') else ''}")  # fmt: skip
    document = {
        "about": "A1111 v1.10.1 + k-diffusion 0.1.1.post1 final latents for an analytic model; see "
        "make_sampler_vectors.py",
        "shape": list(SHAPE),
        "seeds": SEEDS,
        "cases": results,
    }
    args.out.write_text(json.dumps(document, separators=(",", ":")) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
