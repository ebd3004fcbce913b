"""diffedu.engine.distributed on CPU with gloo: DDP equals one process, exact resume, one atomic write, gathering.

Each multi-process test spawns real processes (torch.multiprocessing) that join a gloo process
group through the same environment variables torchrun sets, on a free port.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from diffedu import distill, nets, param, schedules
from diffedu.engine import EMA, TrainState
from diffedu.engine import distributed as D
from diffedu.objectives import denoising_loss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int, timeout: float = 30.0) -> D.DistInfo:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    return D.init_distributed("cpu", timeout=timeout)


def _spawn(fn, world: int, *args) -> None:
    mp.spawn(fn, args=(world, _free_port(), *args), nprocs=world, join=True)


# ----------------------------------------------------------------------------- shared pieces
def _model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "meanflow":  # its loss differentiates the network forward (torch.func.jvp) through the DDP wrapper
        base = nets.UNet(in_channels=1 + 4, base=8, channel_mults=(1, 2), out_channels=1)
        return distill.MeanFlow(distill.TwoTimeNet(base, 4), schedules.RectifiedFlow())
    if kind == "ct":  # its target is a second, no-grad forward through the same DDP-wrapped network
        return distill.ConsistencyModel(nets.UNet(in_channels=1, base=8, channel_mults=(1, 2)), schedules.VPLinear())
    net = nets.MLP(dim=4, hidden=32, depth=2) if kind == "mlp" else nets.UNet(in_channels=1, base=8, channel_mults=(1, 2))
    return param.Denoiser(net, schedules.VPCosine(), "eps")


def _fixed_problem(kind: str, n: int = 16, plain=None):
    """Data with a fixed t and eps per example, so one process and W processes see the same loss terms.

    ``plain``: the model without its DDP wrapper, for MeanFlow's tangent (None: the model the loss is given)."""
    g = torch.Generator().manual_seed(1)
    shape = (n, 4) if kind == "mlp" else (n, 1, 8, 8)
    x, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t = torch.rand(n, generator=g) * 0.9 + 0.05
    r = t * torch.rand(n, generator=g)
    grid, k = distill.consistency_grid(schedules.VPLinear(), 10), torch.randint(0, 10, (n,), generator=g)

    def loss(model, batch, generator):
        xb, idx = batch
        if kind == "meanflow":  # the tangent from the plain module: function transforms cannot run through DDP
            return distill.meanflow_loss(model, xb, r=r[idx], t=t[idx], eps=eps[idx], tangent_model=plain)
        if kind == "ct":
            return distill.ct_loss(model, None, xb, grid, n=k[idx], eps=eps[idx])
        return denoising_loss(model, xb, t=t[idx], eps=eps[idx])

    return x, loss


@pytest.fixture(autouse=True)
def _one_thread():
    """Two processes share two cores: one thread each (as torchrun's OMP_NUM_THREADS=1); also in this process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sgd_steps(kind: str, info: D.DistInfo, steps: int = 3, batch: int = 8) -> dict:
    model = _model(kind)
    state = TrainState(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    state.forward_model = D.wrap_model(model, info)
    x, loss = _fixed_problem(kind, plain=model if info.initialized else None)
    batches = D.ShardedBatches(x, batch, info, seed=3, labels=torch.arange(len(x)))
    D.fit_distributed(state, loss, batches, steps, info, grad_clip=1.0, progress=False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _image_state(info: D.DistInfo, seed: int = 0):
    """A real run: U-Net with dropout, Adam, EMA, per-rank generators, sharded 8x8 images."""
    torch.manual_seed(seed)
    model = param.Denoiser(nets.UNet(in_channels=1, base=8, channel_mults=(1, 2), dropout=0.1), schedules.VPCosine(), "v")
    state = TrainState(model, torch.optim.Adam(model.parameters(), lr=2e-3), ema=EMA(model, 0.9),
                       generator=D.rank_generator(seed, info))
    state.forward_model = D.wrap_model(model, info)
    images = torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(7)).clamp(-1, 1)
    batches = D.ShardedBatches(images, 16, info, seed=seed)
    return state, batches


def _image_loss(model, x0, generator):
    return denoising_loss(model, x0, generator=generator)


def _weights(state: TrainState) -> dict:
    out = {f"model.{k}": v.clone() for k, v in state.model.state_dict().items()}
    out.update({f"ema.{k}": v.clone() for k, v in state.ema.model.state_dict().items()})
    return out


# ----------------------------------------------------------------------------- 2-rank bundle
def _checkpoint_probe(info: D.DistInfo, path: str) -> dict:
    """Count checkpoint writes per rank while rank 1 keeps reading the file (it must always load)."""
    writes = []
    real = D.save_checkpoint
    D.save_checkpoint = lambda *a, **k: (writes.append(1), real(*a, **k))[1]
    seen, bad, stop = [0], [], threading.Event()

    def reader():
        while not stop.is_set():
            if os.path.exists(path):
                try:
                    torch.load(path, weights_only=True)
                    seen[0] += 1
                except Exception as err:  # a partial file would land here
                    bad.append(repr(err))

    thread = threading.Thread(target=reader, daemon=True)
    if info.rank == 1:
        thread.start()
    try:
        state, batches = _image_state(info)
        D.fit_distributed(state, _image_loss, batches, 6, info, checkpoint=path, checkpoint_every=1, progress=False)
    finally:
        stop.set()
        D.save_checkpoint = real
    if info.rank == 1:
        thread.join()
    leftovers = sorted(f for f in os.listdir(os.path.dirname(path)) if f != os.path.basename(path))
    return {"writes": len(writes), "bad_reads": bad, "good_reads": seen[0], "leftovers": leftovers}


def _bundle_worker(rank, world, port, out):
    info = _join(rank, world, port)
    res = {kind: _sgd_steps(kind, info) for kind in ("mlp", "unet", "meanflow", "ct")}
    res["gather_index"] = D.gather_samples(lambda a, b: torch.arange(a, b), 7, info)
    g = D.rank_generator(0, info, stream=9)
    res["gather_noise"] = D.gather_samples(lambda a, b: torch.randn(b - a, 1, 8, 8, generator=g), 5, info)
    ckdir = os.path.join(out, "ckpt")
    os.makedirs(ckdir, exist_ok=True)
    res["checkpoint"] = _checkpoint_probe(info, os.path.join(ckdir, "run.pt"))
    state, batches = _image_state(info)
    D.fit_distributed(state, _image_loss, batches, 8, info, progress=False)  # the uninterrupted run of the kill test
    res["full"] = _weights(state)
    try:  # only rank 0 looks for the file; every rank must get the error
        D.load_distributed(os.path.join(out, "missing.pt"), state, info)
    except FileNotFoundError as err:
        res["missing"] = str(err)
    try:
        D.agree("data: only rank 1 saw this" if rank == 1 else None, info)
    except D.DistributedError as err:
        res["agree"] = str(err)
    if rank == 0:
        t0 = time.perf_counter()
        try:
            D.barrier(info, timeout=1.0)
        except D.DistributedError as err:
            res["barrier"] = (str(err), time.perf_counter() - t0)
    else:
        time.sleep(2.0)  # never reaches the barrier in time
    D.teardown(info)
    torch.save(res, os.path.join(out, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ddp"))
    _spawn(_bundle_worker, 2, out)
    return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(2)]


@pytest.mark.parametrize("kind", ["mlp", "unet", "meanflow", "ct"])
def test_a_ddp_step_on_two_processes_equals_one_process_with_the_global_batch(bundle, kind):
    ref = _sgd_steps(kind, D.DistInfo())
    start = {k: v for k, v in _model(kind).state_dict().items()}
    for res in bundle:
        assert res[kind].keys() == ref.keys()
        assert max((res[kind][k] - start[k]).abs().max() for k in ref) > 1e-3  # the steps moved the weights
        assert max((res[kind][k] - ref[k]).abs().max() for k in ref) <= 1e-6


def test_gathered_samples_are_the_n_rows_once_each_on_every_rank(bundle):
    for res in bundle:
        assert torch.equal(res["gather_index"], torch.arange(7))
        flat = res["gather_noise"].reshape(5, -1)
        assert flat.shape == (5, 64) and torch.cdist(flat, flat).add(torch.eye(5) * 1e3).min() > 1.0
    assert torch.equal(bundle[0]["gather_noise"], bundle[1]["gather_noise"])


def test_only_rank_zero_writes_each_checkpoint_and_a_reader_never_sees_a_partial_file(bundle):
    zero, one = bundle[0]["checkpoint"], bundle[1]["checkpoint"]
    assert zero["writes"] == 6 and one["writes"] == 0
    assert one["bad_reads"] == [] and one["good_reads"] > 0
    assert zero["leftovers"] == [] and one["leftovers"] == []


def test_one_ranks_error_is_raised_on_every_rank(bundle):
    for res in bundle:
        assert "only rank 1 saw this" in res["agree"] and "rank(s) [1]" in res["agree"]


def test_a_missing_checkpoint_on_resume_is_an_error_on_every_rank(bundle):
    for res in bundle:
        assert "missing.pt" in res["missing"] and "nothing to resume from" in res["missing"]


def test_a_barrier_that_a_rank_misses_times_out_instead_of_hanging(bundle):
    message, seconds = bundle[0]["barrier"]
    assert "did not complete within 1 s" in message and seconds < 1.9


# ----------------------------------------------------------------------------- kill and resume
def _kill_worker(rank, world, port, out, mode):
    info = _join(rank, world, port)
    path = os.path.join(out, "run.pt")
    state, batches = _image_state(info)
    if mode == "resume":
        D.load_distributed(path, state, info)
        assert state.step == 4

    def die(s):
        if mode == "kill" and s.step == 6:  # steps 5 and 6 are lost: the checkpoint holds step 4
            os._exit(0)

    D.fit_distributed(state, _image_loss, batches, 8, info, checkpoint=path, checkpoint_every=4, progress=False,
                      callback=die)
    torch.save(_weights(state), os.path.join(out, f"resumed{rank}.pt"))
    D.teardown(info)


def test_killing_a_two_process_run_and_resuming_gives_the_uninterrupted_weights(bundle, tmp_path):
    _spawn(_kill_worker, 2, str(tmp_path), "kill")
    assert not (tmp_path / "resumed0.pt").exists()  # the run died ...
    assert torch.load(tmp_path / "run.pt", weights_only=True)["step"] == 4  # ... after its checkpoint at step 4
    _spawn(_kill_worker, 2, str(tmp_path), "resume")
    full = bundle[0]["full"]
    for rank in range(2):
        resumed = torch.load(tmp_path / f"resumed{rank}.pt")
        assert resumed.keys() == full.keys()
        for k in full:
            assert torch.equal(resumed[k], full[k]), k
    start = _image_state(D.DistInfo())[0].model.state_dict()
    assert max((full[f"model.{k}"] - v).abs().max() for k, v in start.items()) > 1e-3


# ----------------------------------------------------------------------------- three ranks, one rank
def _gather3_worker(rank, world, port, out):
    info = _join(rank, world, port)
    res = {n: D.gather_samples(lambda a, b: torch.arange(a, b).repeat_interleave(2).reshape(-1, 2), n, info)
           for n in (0, 1, 2, 10)}
    D.teardown(info)
    torch.save(res, os.path.join(out, f"g{rank}.pt"))


def test_gathering_on_three_ranks_sees_every_index_once(tmp_path):
    _spawn(_gather3_worker, 3, str(tmp_path))
    for rank in range(3):
        res = torch.load(tmp_path / f"g{rank}.pt")
        for n, got in res.items():
            assert got.shape == (n, 2) and torch.equal(got[:, 0], torch.arange(n)), (rank, n)


def test_a_single_process_needs_no_process_group():
    info = D.init_distributed("cpu", env={})
    assert not info.initialized and info.is_main and info.world_size == 1
    assert torch.equal(D.gather_samples(lambda a, b: torch.arange(a, b), 5, info), torch.arange(5))
    D.barrier(info)
    D.agree(None, info)
    with pytest.raises(D.DistributedError, match="boom"):
        D.agree("boom", info)
    model = _model("mlp")
    assert D.wrap_model(model, info).net is model.net
    D.teardown(info)


def test_shards_partition_the_global_batch_and_resume_needs_no_data_state():
    x = torch.arange(40).float()[:, None]
    one = D.ShardedBatches(x, 8, D.DistInfo(), seed=5)
    parts = [D.ShardedBatches(x, 8, D.DistInfo(rank=r, world_size=4), seed=5) for r in range(4)]
    for step in (0, 3, 4, 11):  # 5 batches per epoch: steps 4 and 11 cross epochs
        assert torch.equal(torch.cat([p.indices(step) for p in parts]), one.indices(step))
    epoch = torch.cat([one.indices(s) for s in range(5)])
    assert len(set(epoch.tolist())) == 40
    assert not torch.equal(one.indices(0), one.indices(5))  # a new order every epoch
    assert torch.equal(D.ShardedBatches(x, 8, D.DistInfo(), seed=5).indices(7), one.indices(7))


def test_bad_arguments_are_named():
    x = torch.zeros(10, 2)
    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        D.ShardedBatches(x, 4, D.DistInfo(rank=0, world_size=3))
    with pytest.raises(ValueError, match="larger than the data set"):
        D.ShardedBatches(x, 12, D.DistInfo())
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        D.env_world({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="RANK"):
        D.env_world({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="sample_fn"):
        D.gather_samples(lambda a, b: torch.zeros(b - a + 1), 3, D.DistInfo())
    assert D.derive_seed(0, 1) != D.derive_seed(0, 2) != D.derive_seed(1, 1)


def test_resuming_from_a_missing_checkpoint_names_it(tmp_path):
    state, _ = _image_state(D.DistInfo())
    with pytest.raises(FileNotFoundError, match="nothing to resume from"):
        D.load_distributed(tmp_path / "none.pt", state, D.DistInfo())
