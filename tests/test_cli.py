import io
import os
import subprocess
import sys

import pytest

from fusion_core.engine.cli import main


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("ls", "run", "resume", "config", "sample", "evaluate", "export", "plot-metrics"):
        assert cmd in out
    assert main(["run"]) == 2  # a usage error is one line, like every user error
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fusion: error: run: the following arguments are required")


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_every_command_the_error_line_points_to_has_a_help_page(command, capsys):
    """A usage error ends "(see `fusion sample --help`)": that page exists without a run (it says
    the options are the run's recipe's), and the run's recipe answers `--help` after RUN_DIR."""
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert f"(see `fusion {command} --help`)" in err
    assert main([command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the description
    assert f"usage: fusion {command} RUN_DIR" in out and f"`fusion {command} RUN_DIR --help`" in out


def test_ls_shows_recipes_presets_and_adapters(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "toy" in out and "quick, tiny" in out and "timeseries" in out


def test_config_prints_resolved_yaml_with_overrides(capsys):
    assert main(["config", "toy", "--preset", "tiny", "train.steps=3", "model.dim=48"]) == 0
    out = capsys.readouterr().out
    assert "steps: 3" in out and "dim: 48" in out and "recipe: toy" in out


def test_mistakes_list_valid_choices(capsys):
    assert main(["run", "tyo"]) == 2
    assert "recipes: [" in capsys.readouterr().err
    assert main(["run", "toy", "--preset", "fast"]) == 2
    assert "presets: ['quick', 'tiny']" in capsys.readouterr().err
    assert main(["config", "toy", "train.stepz=3"]) == 2
    assert "did you mean train.steps" in capsys.readouterr().err
    assert main(["resume", "/nonexistent"]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_run_sample_and_plot_end_to_end(tmp_path, capsys):
    assert main(["run", "toy", "--preset", "tiny", f"run_dir={tmp_path}"]) == 0
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "checkpoints" / "latest").is_file()
    assert main(["resume", str(tmp_path), "train.steps=10"]) == 0  # the run's config records it
    assert "steps: 10" in (tmp_path / "config.yaml").read_text()
    assert main(["sample", str(tmp_path), "sample.steps=3"]) == 0
    assert '"vertical":' in (tmp_path / "samples.txt").read_text()
    assert main(["plot-metrics", str(tmp_path)]) == 0
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_console_script_and_module_entry_points_work():
    r = subprocess.run(["fusion", "ls"], capture_output=True, text=True)
    assert r.returncode == 0 and "toy" in r.stdout
    r = subprocess.run([sys.executable, "-m", "fusion_core.engine.cli", "ls"], capture_output=True, text=True)
    assert r.returncode == 0 and "toy" in r.stdout


def test_sample_takes_an_exported_model_folder_and_never_writes_into_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(["run", "toy", "--preset", "tiny", "train.progress=false", f"run_dir={run}", "train.steps=2",
                 "train.ckpt_every=2"]) == 0
    assert main(["export", str(run), str(tmp_path / "exported")]) == 0
    before = sorted(p.name for p in (tmp_path / "exported").iterdir())
    assert main(["sample", str(tmp_path / "exported")]) == 0  # a model folder on its own
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == before  # nothing written into it
    made = next((tmp_path / "runs").iterdir())
    assert (made / "samples.txt").is_file() and (made / "config.yaml").is_file()
    assert main(["sample", str(run / "model")]) == 0 and (run / "samples.txt").is_file()  # the run around it
    assert "samples.txt" not in {p.name for p in (run / "model").iterdir()}
    capsys.readouterr()


class _Exited(Exception):
    """Raised in place of os._exit, carrying the exit code."""


class _Stream(io.StringIO):
    flushed = False

    def flush(self):
        self.flushed = True
        super().flush()


@pytest.mark.parametrize("outcome, code", [(3, 3), (SystemExit(2), 2), (SystemExit("bad"), 1),
                                           (RuntimeError("boom"), 1)])
def test_a_torchrun_worker_ends_without_finalization(monkeypatch, outcome, code):
    """A worker (LOCAL_RANK set, WORLD_SIZE > 1) leaves through os._exit with its command's exit
    code, its streams flushed (gloo's threads can abort a finalizing interpreter); a single
    process returns the code as usual."""
    from fusion_core.engine import cli

    def fake_main():
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def fake_exit(c):
        raise _Exited(c)

    out, err = _Stream(), _Stream()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(cli, "main", fake_main)
    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(_Exited) as e:
        cli.entry()
    assert e.value.args == (code,) and out.flushed and err.flushed
    assert ("RuntimeError: boom" in err.getvalue()) == isinstance(outcome, RuntimeError)
    assert ("bad" in err.getvalue()) == (getattr(outcome, "code", None) == "bad")
    monkeypatch.setenv("WORLD_SIZE", "1")
    if not isinstance(outcome, BaseException):
        assert cli.entry() == outcome
