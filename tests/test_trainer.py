"""The engine: exact resume after SIGKILL (in training and mid-checkpoint), 1 vs 2 processes,
gradient accumulation, NaN detection, LR schedule, EMA."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fusion_core.engine.config import to_object
from fusion_core.engine.recipe import get_recipe
from fusion_core.engine.trainer import EMA, OptimArgs, Trainer, TrainingDiverged, lr_factor

TOY = ["--preset", "tiny", "train.progress=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def fusion(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "fusion_core.engine.cli", *args], env=env or ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def losses(run_dir):
    recs = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs}


def final_weights(run_dir):
    ck = Path(run_dir) / "checkpoints"
    return load_file(str(ck / (ck / "latest").read_text().strip() / "model.safetensors"))


def at_latest(run_dir, name="step_00000012"):
    """The run's ``latest`` pointer names ``name``. A checkpoint folder appears a moment before the
    pointer moves to it; a kill in between resumes from the previous one (and rewrites this one),
    so tests that kill "after step 12" wait for the pointer, not the folder."""
    try:
        return (Path(run_dir) / "checkpoints" / "latest").read_text().strip() == name
    except FileNotFoundError:
        return False


# Each checkpoint held this long before publishing: the toy run takes ~0.2 s from its step-12
# checkpoint to its end, a window a loaded machine's poller can miss; with the delay >= 2 s remain
# (the kill lands in steps 13-18, or in step 18's write: either way the run resumes from step 12).
SLOW_CKPT = {**ENV, "FUSION_CKPT_WRITE_DELAY": "1"}


def wait_for(pred, proc, timeout=60):
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early:\n{proc.stdout.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    d = tmp_path_factory.mktemp("straight")
    p = fusion("run", "toy", *TOY, f"run_dir={d}", "train.steps=24", "train.ckpt_every=6")
    assert p.wait() == 0, p.stdout.read()
    return d


def _assert_same_run(a, b):
    la, lb = losses(a), losses(b)
    assert sorted(la) == list(range(1, 25)) and sorted(lb) == list(range(1, 25))
    assert max(abs(la[s] - lb[s]) for s in la) == 0.0, "losses differ after resume"
    wa, wb = final_weights(a), final_weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "final weights differ after resume"


def test_sigkill_during_training_then_resume_is_exact(straight, tmp_path):
    p = fusion("run", "toy", *TOY, f"run_dir={tmp_path}", "train.steps=24", "train.ckpt_every=6", env=SLOW_CKPT)
    wait_for(lambda: at_latest(tmp_path), p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert max(losses(tmp_path)) < 24, "the run finished before it was killed"
    r = fusion("resume", str(tmp_path))
    assert r.wait() == 0, r.stdout.read()
    _assert_same_run(straight, tmp_path)


def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(straight, tmp_path):
    env = {**ENV, "FUSION_CKPT_WRITE_DELAY": "30"}
    p = fusion("run", "toy", *TOY, f"run_dir={tmp_path}", "train.steps=24", "train.ckpt_every=6", env=env)
    ck = tmp_path / "checkpoints"
    wait_for(lambda: ck.is_dir() and any(x.name.startswith(".fusion-tmp-") for x in ck.iterdir()), p)
    p.send_signal(signal.SIGKILL)  # the first checkpoint (step 6) is half written
    p.wait()
    assert not (ck / "step_00000006").exists() and not (ck / "latest").exists()
    r = fusion("resume", str(tmp_path))  # nothing good to resume: starts over, exactly
    assert r.wait() == 0, r.stdout.read()
    _assert_same_run(straight, tmp_path)
    # and once more: a later half-written checkpoint falls back to the newest complete one
    p = fusion("resume", str(tmp_path), "train.steps=30", env=env)
    wait_for(lambda: any(x.name.startswith(".fusion-tmp-step_00000030") for x in ck.iterdir()), p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (ck / "latest").read_text().strip() == "step_00000024"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process(straight, tmp_path, strategy):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "fusion_core.engine.cli", "run", "toy", *TOY, f"run_dir={tmp_path}", "train.steps=24",
           "train.ckpt_every=6", f"train.strategy={strategy}"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    one, two = losses(straight), losses(tmp_path)
    diff = max(abs(one[s] - two[s]) for s in one)
    assert diff < 1e-4 * max(one.values()), diff
    assert len(list((tmp_path / "checkpoints").glob("step_*"))) == 3  # rank 0 alone writes


def _trainer(tmp_path, **train_overrides):
    recipe = get_recipe("toy")
    cfg = recipe.load_config("tiny", overrides=[f"run_dir={tmp_path}"] +
                             [f"train.{k}={v}" for k, v in train_overrides.items()])
    c = to_object(cfg)
    torch.manual_seed(0)
    job = recipe.setup(c, tmp_path, None)
    return Trainer(job.model, job.dataset, job.collate, c.train, tmp_path)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    a = _trainer(tmp_path / "a").fit()
    b = _trainer(tmp_path / "b", grad_accum=2).fit()
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)


def test_bf16_autocast_on_cpu_follows_the_fp32_run(tmp_path):
    """``train.precision=bf16`` on a CPU: the weights stay fp32 and the losses track the fp32
    run's to bf16 rounding (the attention runs in fp32 inside autocast)."""
    a = _trainer(tmp_path / "a").fit()
    t = _trainer(tmp_path / "b", precision="bf16")
    b = t.fit()
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    assert t.precision == "bf16 autocast" and _trainer(tmp_path / "c").precision == "fp32"
    for x, y in zip(a, b):
        assert math.isfinite(y["loss"]) and y["loss"] == pytest.approx(x["loss"], rel=5e-3)
    assert b[-1]["loss"] != a[-1]["loss"]  # autocast did run in bf16


def test_training_clock_carries_over_a_resume(tmp_path):
    """Reports state the wall time of the whole run, not of its last segment."""
    first = _trainer(tmp_path, steps=4, ckpt_every=4)
    first.fit()
    assert first.train_seconds > 0
    second = _trainer(tmp_path, steps=8, ckpt_every=4)
    assert second.resume() and second.train_seconds == first.train_seconds
    second.fit()
    assert second.step == 8 and second.train_seconds > first.train_seconds
    third = _trainer(tmp_path, steps=8)
    assert third.resume() and third.train_seconds == second.train_seconds


def test_nan_loss_stops_with_step_and_part(tmp_path):
    t = _trainer(tmp_path)
    with torch.no_grad():
        t.model.adapters["image"].patch_out.weight.fill_(float("nan"))
    before = t.model.adapters["text"].embedding.weight.clone()
    with pytest.raises(TrainingDiverged, match=r"step 0: loss part 'image' is nan"):
        t.fit()
    assert torch.equal(before, t.model.adapters["text"].embedding.weight)  # no update applied


def test_a_non_finite_step_is_skipped_on_the_device_and_reported_at_the_next_log(tmp_path):
    """No host sync per step: a non-finite loss is found by the fused optimizer (``found_inf``),
    which skips the update, and the trainer reports the first such step when it next logs."""
    t = _trainer(tmp_path, log_every=4, ckpt_every=100, steps=8)
    assert t._fused
    with torch.no_grad():
        t.model.adapters["image"].patch_out.weight.fill_(float("nan"))
    before = {k: v.clone() for k, v in t.model.state_dict().items() if "patch_out" not in k}
    with pytest.raises(TrainingDiverged, match=r"step 0: loss part 'image' is nan \(no update applied\)"):
        t.fit()
    assert t.step == 4  # found at the first log, four steps later
    after = t.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # none of the four steps updated anything
    assert not (tmp_path / "metrics.jsonl").exists() or not (tmp_path / "metrics.jsonl").read_text().strip()


def test_batch_size_must_split_over_accumulation():
    with pytest.raises(ValueError, match="multiple of train.grad_accum"):
        _trainer(Path("/tmp/unused"), batch_size=3, grad_accum=2)


def test_warmup_then_cosine_to_min_lr():
    a = OptimArgs(lr=3e-4, min_lr=1.5e-5, warmup=10)
    f = [lr_factor(s, a, 110) * a.lr for s in range(111)]
    assert f[0] == pytest.approx(3e-5) and f[9] == pytest.approx(3e-4)
    assert f[60] == pytest.approx(1.5e-5 + (3e-4 - 1.5e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f[110] == pytest.approx(1.5e-5)


def test_ema_tracks_weights():
    m = torch.nn.Linear(2, 2)
    ema = EMA(m, decay=0.5, warmup=False)
    start = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(2.0)
    ema.update(m)
    torch.testing.assert_close(ema.shadow["weight"], start + 1.0)
    ema.copy_to(m)
    torch.testing.assert_close(m.weight.detach(), start + 1.0)


def test_ema_warmup_forgets_the_initialisation_at_the_closed_form_rate():
    """Weights held at 0 after an initialisation of 1: the shadow is the initialisation's share,
    prod_k d_k with d_k = min(decay, (1 + k) / (10 + k)) (0.999**n without the warm-up)."""
    from fusion_core.engine.ema import warmup_decay

    m = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.0)  # the "initialisation"
    ema = EMA(m, decay=0.999)
    with torch.no_grad():
        m.weight.fill_(0.0)  # trained weights, held fixed: the shadow is the initial share left
    for n in range(2000):
        ema.update(m)
    share = math.prod(warmup_decay(0.999, k) for k in range(2000))
    assert ema.shadow["weight"].item() == pytest.approx(share, rel=1e-4)
    assert share < 1e-3 < 0.999**2000  # 0.135 without the warm-up


def _launch(nproc, *args, env=None):
    """``fusion ARGS`` in nproc processes (torchrun for 2), in its own process group."""
    prefix = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
              if nproc > 1 else [sys.executable])
    return subprocess.Popen([*prefix, "-m", "fusion_core.engine.cli", *args], env=env or ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_run_resumes_on_another_number_of_processes(straight, tmp_path, first, then):
    """FSDP2 checkpoints are sharded (each process writes its own shards, nothing gathered) and
    reshard on load: a run killed mid-way resumes on another number of processes and ends as the
    uninterrupted one-process run does (float summation order aside)."""
    p = _launch(first, "run", "toy", *TOY, f"run_dir={tmp_path}", "train.steps=24", "train.ckpt_every=6",
                "train.strategy=fsdp", env=SLOW_CKPT)
    wait_for(lambda: at_latest(tmp_path), p, timeout=120)
    os.killpg(p.pid, signal.SIGKILL)  # the launcher and every worker
    p.wait()
    ck = tmp_path / "checkpoints" / "step_00000012"
    assert (ck / ".metadata").is_file() == (first > 1)  # sharded when written by FSDP processes
    r = _launch(then, "resume", str(tmp_path))
    out = r.communicate(timeout=300)[0]
    assert r.returncode == 0, out
    one, resumed = losses(straight), losses(tmp_path)
    assert sorted(resumed) == sorted(one)
    assert max(abs(one[s] - resumed[s]) for s in one) < 1e-4 * max(one.values())
    if first > 1:  # a sharded checkpoint of your own run loads offline, consolidated, in one process
        from fusion_core import FusionModel
        from fusion_core.engine.recipe import load_model

        with pytest.raises(ValueError, match="is a sharded training checkpoint .* from_pretrained reads only"):
            FusionModel.from_pretrained(ck)  # its index is a pickle: never read from a model folder
        from_shards = load_model(ck, weights="model", device="cpu").state_dict()
        one_proc = load_file(str(straight / "checkpoints" / "step_00000012" / "model.safetensors"))
        assert max((from_shards[k] - one_proc[k]).abs().max().item() for k in one_proc) < 1e-4


def test_worker_processes_collate_the_same_batches(straight, tmp_path):
    """train.workers=2: batches are collated in data-loading processes ahead of the loop; the
    run is the same run (and resumes exactly after a kill, as batches are a function of the step)."""
    p = fusion("run", "toy", *TOY, f"run_dir={tmp_path}", "train.steps=24", "train.ckpt_every=6", "train.workers=2",
               env=SLOW_CKPT)
    wait_for(lambda: at_latest(tmp_path), p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = fusion("resume", str(tmp_path))
    assert r.wait() == 0, r.stdout.read()
    _assert_same_run(straight, tmp_path)


def test_a_stream_is_read_once_per_epoch_across_processes_and_workers(tmp_path):
    """JSONL shards too large for memory go through ExampleStream: over one epoch, 2 processes x
    2 data-loading workers encode every example exactly once; the losses equal one process's."""
    for s in range(3):
        lines = [json.dumps({"id": 16 * s + i, "text": f"example number {16 * s + i}"}) for i in range(16)]
        (tmp_path / f"shard{s}.jsonl").write_text("\n".join(lines) + "\n")
    script = Path(__file__).parent / "stream_worker.py"
    runs = {}
    for name, nproc, workers in (("one", 1, 0), ("four", 2, 2)):
        run = tmp_path / name
        run.mkdir()
        prefix = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                  if nproc > 1 else [sys.executable])
        r = subprocess.run([*prefix, str(script), str(tmp_path / "shard*.jsonl"), str(run), "6", str(workers)],
                           env=ENV, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        runs[name] = run
    seen = [json.loads(x) for f in runs["four"].glob("seen-*.jsonl") for x in f.read_text().splitlines()]
    assert sorted(s["id"] for s in seen) == list(range(48))  # 6 steps x 8 = one epoch, each once
    assert len({f.name for f in runs["four"].glob("seen-*.jsonl")}) == 4  # read by 2 x 2 workers
    one, four = losses(runs["one"]), losses(runs["four"])
    assert max(abs(one[s] - four[s]) for s in one) < 1e-4 * max(one.values())


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_the_cli_resumes_a_run_on_another_number_of_processes(tmp_path, strategy):
    """What the issue ran (#25): 2 FSDP (or DDP) processes, then `fusion resume` in one process
    (the sharded optimizer state once overwrote the fused flag), then `fusion resume --nproc 2`."""
    run = tmp_path / "run"
    steps = [("run", "toy", *TOY, "--nproc", "2", f"train.strategy={strategy}", "train.steps=4", "train.ckpt_every=2",
              f"run_dir={run}"), ("resume", str(run), "train.steps=6"), ("resume", str(run), "--nproc", "2", "train.steps=8")]
    for argv in steps[: 3 if strategy == "fsdp" else 2]:
        p = fusion(*argv)
        assert p.wait(timeout=300) == 0, (argv, p.stdout.read())
    assert sorted(losses(run)) == list(range(1, 9 if strategy == "fsdp" else 7))


def _descendants(pid: int) -> set[int]:
    """Live descendants of ``pid`` (zombies excluded), from /proc."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(d.name)] = int(fields[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, par in parents.items() if par in frontier} - out
        out |= frontier
    return out


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_kill_9_of_a_multi_process_run_leaves_no_process_behind(tmp_path):
    p = fusion("run", "toy", *TOY, "--nproc", "2", "train.steps=100000", "train.ckpt_every=5", f"run_dir={tmp_path}")
    wait_for(lambda: (tmp_path / "checkpoints" / "step_00000005").is_dir(), p, timeout=120)
    children = _descendants(p.pid)
    assert len(children) >= 3, children  # torchrun and two workers
    os.kill(p.pid, signal.SIGKILL)  # the parent alone, as a user's kill -9 does
    p.wait()
    t0 = time.time()
    while _alive(children) and time.time() - t0 < 30:
        time.sleep(0.2)
    left = _alive(children)
    for pid in left:  # do not leave them training if the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"orphans of the killed run: {left}"
