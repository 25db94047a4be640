"""The trust boundary (DESIGN.md): a model or run folder someone sent runs no code when loaded, and
the library writes only files it owns, inside the folder it was given. Each test plants an attack
and asserts its marker file never appears (or that the victim file is untouched)."""

import json
import os
import pickle
import stat
import sys
import textwrap

import pytest
import torch

from fusion_core import FusionModel, TransformerArgs
from fusion_core.engine.cli import main
from fusion_core.engine.sharded import read_index, safe_load
from fusion_core.modalities.text import TextAdapter
from fusion_core.modalities.timeseries import TimeSeriesAdapter
from fusion_core.storage import CheckpointError, FILE_MODE, list_checkpoints, sha256

TOY = ["--preset", "tiny", "train.progress=false"]


def _model():
    torch.manual_seed(0)
    args = TransformerArgs(dim=32, n_layers=1, n_heads=2)
    return FusionModel(args, [TextAdapter(32, markers=("sensor",)), TimeSeriesAdapter(32, features=2, name="sensor")])


def _rewrite_manifest(folder):
    """What a sender does after editing a file: the manifest is theirs too."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in list(manifest["files"]):
        manifest["files"][name] = {"bytes": (folder / name).stat().st_size, "sha256": sha256(folder / name)}
    for extra in (".metadata",):
        if (folder / extra).exists():
            manifest["files"][extra] = {"bytes": (folder / extra).stat().st_size, "sha256": sha256(folder / extra)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _plant_class(folder, cls, kwargs):
    config = json.loads((folder / "model.json").read_text())
    first = next(iter(config["adapters"]))
    config["adapters"][first] = {"class": cls, "kwargs": kwargs}
    (folder / "model.json").write_text(json.dumps(config))
    _rewrite_manifest(folder)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['FUSION_TEST_MARKER']}",))


def _plant_pickle(folder, marker, monkeypatch):
    monkeypatch.setenv("FUSION_TEST_MARKER", str(marker))
    (folder / ".metadata").write_bytes(pickle.dumps(_Evil()))
    _rewrite_manifest(folder)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("toy") / "run"
    assert main(["run", "toy", *TOY, f"run_dir={run}", "train.steps=2", "train.ckpt_every=2"]) == 0
    return run


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst


# -- code execution from a received folder ---------------------------------------------------------

def test_an_adapter_class_a_model_folder_names_is_not_imported_or_called(tmp_path):
    folder = _model().save_pretrained(tmp_path / "m")
    marker = tmp_path / "PWNED"
    _plant_class(folder, "os:system", {"command": f"touch {marker}"})
    with pytest.raises(ValueError, match=r"'os:system' is not a registered adapter.*trust_remote_code=True"):
        FusionModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="not a subclass of fusion_core.Adapter"):  # even when trusted
        FusionModel.from_pretrained(folder, trust_remote_code=True)
    assert not marker.exists()


def test_a_module_on_the_path_that_a_folder_names_is_not_imported(tmp_path, monkeypatch):
    marker = tmp_path / "IMPORTED"
    (tmp_path / "evil_adapter_mod.py").write_text(textwrap.dedent(f"""
        open({str(marker)!r}, "w").close()
        from fusion_core.modalities.text import TextAdapter as Adapter
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = _model().save_pretrained(tmp_path / "m")
    _plant_class(folder, "evil_adapter_mod:Adapter", {"dim": 32})
    with pytest.raises(ValueError, match="'evil_adapter_mod:Adapter' is not a registered adapter"):
        FusionModel.from_pretrained(folder)
    assert not marker.exists() and "evil_adapter_mod" not in sys.modules


def test_fusion_sample_resume_and_export_refuse_an_untrusted_class_in_one_line(toy_run, tmp_path, capsys):
    run = _copy(toy_run, tmp_path / "run")
    marker = tmp_path / "PWNED"
    for folder in [run / "model", *list_checkpoints(run / "checkpoints")]:
        _plant_class(folder, "os:system", {"command": f"touch {marker}"})
    for argv in (["sample", str(run)], ["export", str(run), str(tmp_path / "out")], ["resume", str(run), "train.steps=4"]):
        rc = main(argv)
        err = capsys.readouterr().err
        if argv[0] == "resume":  # resume rebuilds the model from the run's config, not model.json
            assert rc in (0, 2), err
        else:
            assert rc == 2 and "not a registered adapter" in err and "--trust-remote-code" in err, (argv, err)
        assert "Traceback" not in err and not marker.exists()


def test_a_planted_pickle_as_a_sharded_index_is_never_unpickled(toy_run, tmp_path, capsys, monkeypatch):
    run = _copy(toy_run, tmp_path / "run")
    marker = tmp_path / "UNPICKLED"
    ck = list_checkpoints(run / "checkpoints")[-1]
    _plant_pickle(ck, marker, monkeypatch)
    with pytest.raises(ValueError, match="sharded training checkpoint .* from_pretrained reads only"):
        FusionModel.from_pretrained(ck)
    model = _model().save_pretrained(tmp_path / "m")
    _plant_pickle(model, marker, monkeypatch)
    with pytest.raises(ValueError, match="sharded training checkpoint"):
        FusionModel.from_pretrained(model)
    (run / "model" / "manifest.json").unlink()  # the newest good model is now the planted checkpoint
    for argv in (["resume", str(run), "train.steps=4"], ["sample", str(run)]):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and "refused to read this sharded checkpoint's index" in err, err
        assert "Traceback" not in err
    with pytest.raises(CheckpointError, match="names posix.system|names os.system"):
        read_index(ck)
    assert not marker.exists()


def test_the_safe_sharded_reader_loads_real_checkpoints_and_refuses_pickled_entries(tmp_path, monkeypatch):
    import warnings

    import torch.distributed.checkpoint as dcp

    marker = tmp_path / "UNPICKLED"
    monkeypatch.setenv("FUSION_TEST_MARKER", str(marker))
    model = torch.nn.Linear(3, 2)
    state = {"model": model.state_dict(), "extra": {"lr": 0.1, "betas": (0.9, 0.95), "name": "adamw"}}
    with warnings.catch_warnings():  # DCP says it assumes one process: that is the intent
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=str(tmp_path / "good"), no_dist=True)
        dcp.save({"extra": {"obj": _Evil()}}, checkpoint_id=str(tmp_path / "bad"), no_dist=True)
    into = {"model": {k: torch.zeros_like(v) for k, v in model.state_dict().items()},
            "extra": {"lr": 0.0, "betas": (0.0, 0.0), "name": ""}}
    safe_load(into, tmp_path / "good")
    assert torch.equal(into["model"]["weight"], model.weight) and into["extra"]["betas"] == (0.9, 0.95)
    with pytest.raises(CheckpointError, match="refused entry 'extra.obj'"):
        safe_load({"extra": {"obj": None}}, tmp_path / "bad")
    assert not marker.exists()


# -- the user's files --------------------------------------------------------------------------------

def test_save_pretrained_never_deletes_a_users_files(tmp_path):
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "sub" / "train.py").write_text("print('mine')")
    with pytest.raises(ValueError, match=r"holds files save_pretrained did not write \(notes.txt, sub\)"):
        _model().save_pretrained(folder)
    assert (folder / "notes.txt").read_text() == "my notes" and (folder / "sub" / "train.py").exists()
    saved = _model().save_pretrained(tmp_path / "m")
    again = _model().save_pretrained(saved)  # an earlier save is replaced as a whole, atomically
    assert sorted(p.name for p in again.iterdir()) == ["manifest.json", "model.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "mine"]  # no temporaries left beside it
    (tmp_path / "empty").mkdir()
    _model().save_pretrained(tmp_path / "empty")
    (tmp_path / "link").symlink_to(tmp_path / "mine")
    with pytest.raises(ValueError, match="is a symbolic link"):
        _model().save_pretrained(tmp_path / "link")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        _model().save_pretrained(tmp_path / "file")


def test_saved_files_get_the_usual_permissions(tmp_path, toy_run):
    for folder in (_model().save_pretrained(tmp_path / "m"), toy_run / "model", list_checkpoints(toy_run / "checkpoints")[-1]):
        for f in folder.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == FILE_MODE, (f, oct(f.stat().st_mode))


@pytest.mark.parametrize("name", [".lock", "train.log", "metrics.jsonl", "checkpoints", "config.yaml"])
def test_a_link_planted_in_a_run_folder_is_refused_not_followed(tmp_path, capsys, name):
    victim = tmp_path / "victim"
    victim.mkdir() if name == "checkpoints" else victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(victim)
    rc = main(["run", "toy", *TOY, f"run_dir={run}", "train.steps=2", "train.ckpt_every=2"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{run / name} is a symbolic link" in err and "Traceback" not in err, err
    assert (list(victim.iterdir()) == [] if name == "checkpoints" else victim.read_text() == "precious")


def test_a_link_named_like_a_leftover_is_refused_not_deleted(toy_run, tmp_path, capsys):
    run = _copy(toy_run, tmp_path / "run")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    (run / ".fusion-tmp-model-abcdefgh").symlink_to(victim)
    rc = main(["resume", str(run), "train.steps=4"])
    err = capsys.readouterr().err
    assert rc == 2 and ".fusion-tmp-model-abcdefgh is a symbolic link" in err, err
    assert (victim / "keep.txt").read_text() == "keep" and (run / ".fusion-tmp-model-abcdefgh").is_symlink()


def test_resume_with_overrides_that_do_not_fit_the_checkpoint_changes_nothing(toy_run, tmp_path, capsys):
    run = _copy(toy_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    rc = main(["resume", str(run), "model.dim=64", "train.steps=4"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.dim=64" in err and "does not fit" in err and "Traceback" not in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # config.yaml too
    assert main(["resume", str(run), "train.steps=4"]) == 0  # a plain resume still works


def test_overwrite_moves_the_whole_run_aside_and_it_stays_usable(toy_run, tmp_path, capsys):
    run = _copy(toy_run, tmp_path / "run")
    assert main(["sample", str(run)]) == 0 and (run / "samples.txt").is_file()
    old = {p.name for p in run.iterdir()} - {".lock"}
    assert main(["run", "toy", *TOY, f"run_dir={run}", "train.steps=2", "train.ckpt_every=2", "--overwrite"]) == 0
    aside = next(run.glob("previous-*"))
    assert {p.name for p in aside.iterdir()} == old  # config.yaml, samples, logs: the whole run
    assert main(["sample", str(aside)]) == 0
    assert main(["resume", str(aside), "train.steps=3"]) == 0
    capsys.readouterr()


@pytest.mark.filterwarnings("ignore::fusion_core.modalities.timeseries.UnderfitWarning")  # a sized-up adapter, refused
def test_huge_sizes_in_a_model_folder_are_refused_before_allocating(tmp_path):
    folder = _model().save_pretrained(tmp_path / "m")
    config = json.loads((folder / "model.json").read_text())
    config["backbone"].update(dim=65536, n_layers=64, n_heads=64)  # ~3.4e12 parameters: 13 TiB in fp32
    (folder / "model.json").write_text(json.dumps(config))
    _rewrite_manifest(folder)
    with pytest.raises(ValueError, match=r"model.json: a backbone of .* M parameters needs about .* refused before"):
        FusionModel.from_pretrained(folder)
    config["backbone"].update(dim=32, n_layers=1, n_heads=2)
    config["adapters"]["sensor"]["kwargs"]["features"] = 10**11  # an adapter's own size, measured on meta
    (folder / "model.json").write_text(json.dumps(config))
    _rewrite_manifest(folder)
    with pytest.raises(ValueError, match=r"model.json: a model of .* M parameters needs about"):
        FusionModel.from_pretrained(folder)
