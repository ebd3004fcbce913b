"""The command-line trainer: config from TOML and flags, clear errors on every rank, torchrun end to end on CPU."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffedu import train_images as T
from diffedu.engine import distributed as D

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "6", "--batch-size", "16", "--width", "8", "--log-every", "3", "--eval-samples", "24", "--grid", "16",
        "--sample-steps", "4", "--feature-steps", "30", "--no-progress", "--timeout", "60"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", DIFFEDU_CACHE=str(tmp_path / "cache"), PYTHONWARNINGS="ignore", **extra)
    return env


def test_every_option_is_documented_in_help(capsys):
    with pytest.raises(SystemExit):
        T.build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(T.TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
    assert "--config" in text and "--no-compile" in text and "torchrun" in text


def test_toml_is_overridden_by_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('objective = "edm"\nbatch-size = 64\nsteps = 10\ncompile = true\nlr = 1\n')
    cfg = T.parse_config(["--config", str(path), "--steps", "7", "--no-compile"])
    assert (cfg.objective, cfg.batch_size, cfg.steps, cfg.compile, cfg.lr) == ("edm", 64, 7, False, 1.0)
    assert cfg.model == T.TrainConfig().model
    path.write_text('objectiv = "edm"\n')
    with pytest.raises(T.ConfigError, match="unknown option 'objectiv'"):
        T.parse_config(["--config", str(path)])
    path.write_text('steps = "ten"\n')
    with pytest.raises(T.ConfigError, match="steps: expected an integer"):
        T.parse_config(["--config", str(path)])


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet"], "model: unknown model 'resnet'; expected one of unet, mlp"),
    (["--data", "imagenet"], "data: unknown data 'imagenet'"),
    (["--objective", "gan"], "objective: unknown objective 'gan'"),
    (["--steps", "0"], "steps: expected a positive integer"),
    (["--image-size", "10", "--depth", "3"], "not divisible by 4"),
])
def test_bad_configurations_are_named_before_any_work(args, message, capsys):
    assert T.main(args) == 2
    assert message in capsys.readouterr().err


def test_a_global_batch_must_split_evenly():
    with pytest.raises(T.ConfigError, match="not divisible by the world size 3"):
        T.validate(T.TrainConfig(batch_size=16), world_size=3)


def test_resuming_without_a_checkpoint_is_an_error(tmp_path, capsys):
    assert T.main(["--resume", "--out-dir", str(tmp_path), *TINY]) == 1
    err = capsys.readouterr().err
    assert "checkpoint.pt" in err and "nothing to resume from" in err


def test_torchvision_sets_fail_offline_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr("diffedu.data.load_torchvision", _no_network)
    cfg = T.TrainConfig(data="torchvision-cifar10", image_size=8)
    with pytest.raises(T.ConfigError, match="load_digits"):
        T.load_data(cfg, D.DistInfo())


def _no_network(name, root=None, train=True, download=True, return_labels=False):
    from diffedu.data.images import _offline_error

    raise _offline_error(name, "could not download it (URLError: no network)")


@pytest.mark.parametrize("objective", T.OBJECTIVES)
def test_every_objective_trains_and_samples_in_one_process(objective, tmp_path):
    torch.set_num_threads(1)
    cfg = T.parse_config(["--objective", objective, "--out-dir", str(tmp_path), "--no-metrics", "--model",
                          "mlp" if objective == "x0" else "unet", *TINY])
    summary = T.train(cfg, D.DistInfo())
    assert summary["steps"] == 6 and summary["samples"] == 24 and summary["final_loss"] < 10
    assert (tmp_path / "samples.png").stat().st_size > 0 and (tmp_path / "checkpoint.pt").exists()


def test_a_batch_that_does_not_split_fails_on_every_rank_before_joining(tmp_path, monkeypatch, capsys):
    # what torchrun sets for each of two ranks; the check needs no collective, so no rank can wait for another
    for rank in range(2):
        for k, v in dict(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=1).items():
            monkeypatch.setenv(k, str(v))
        assert T.main(["--batch-size", "15", "--out-dir", str(tmp_path), "--steps", "2"]) == 2
        assert "batch_size: the global batch 15 is not divisible by the world size 2" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_torchrun_with_two_processes_runs_end_to_end(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun is installed with torch"
    out = tmp_path / "run"
    cmd = [torchrun, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           "-m", "diffedu.train_images", "--out-dir", str(out), "--checkpoint-every", "3", *TINY]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150, env=_env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "2 process(es) on cpu [gloo], global batch 16 (8 per process)" in proc.stdout
    assert proc.stdout.count("done: steps=6") == 1  # rank 0 alone prints
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "metrics.json", "samples.png"]
    result = json.loads((out / "metrics.json").read_text())
    assert result["samples"] == 24 and result["world_size"] == 2 and result["FD_DigitCNN"] >= 0


def test_torchrun_trains_meanflow_on_two_processes(tmp_path):
    # MeanFlow's loss takes a JVP of the network: from the plain module, while the gradient goes through DDP
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    out = tmp_path / "run"
    cmd = [torchrun, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           "-m", "diffedu.train_images", "--out-dir", str(out), "--objective", "meanflow", "--no-metrics", *TINY,
           "--sample-steps", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150, env=_env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((out / "metrics.json").read_text())
    assert result["steps"] == 6 and result["world_size"] == 2 and result["samples"] == 24
    assert math.isfinite(result["final_loss"]) and (out / "samples.png").stat().st_size > 0


def test_ct_grid_follows_the_curriculum_of_the_step(monkeypatch):
    from diffedu import distill

    seen = []

    def spy(model, target, x0, ts, generator=None):
        seen.append(len(ts) - 1)
        return torch.zeros(len(x0))

    monkeypatch.setattr(distill, "ct_loss", spy)
    cfg = T.parse_config(["--objective", "ct", "--steps", "1000"])
    model = T.build_model(cfg, (1, 8, 8))
    k = [0]
    loss = T.make_loss(cfg, model, lambda: k[0])
    for k[0] in (0, 500, 1000):
        loss(model, torch.zeros(2, 1, 8, 8), None)
    assert seen == [distill.ct_curriculum(s, 1000) for s in (0, 500, 1000)] and seen[0] < seen[1] < seen[2]
