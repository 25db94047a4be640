"""save_pretrained / from_pretrained: a folder that rebuilds the model with nothing else, checked in a
fresh process; every way a folder can be wrong fails with a message naming it."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fusion_core import FusionModel, GaussianDiffusion, TransformerArgs, generation as gen, make_sampler
from fusion_core.modalities.image import ImageAdapter
from fusion_core.modalities.text import TextAdapter
from fusion_core.modalities.timeseries import TimeSeriesAdapter


def _model():
    torch.manual_seed(0)
    words = TextAdapter(32, markers=("picture", "sensor"), tie_weights=True, name="words")
    picture = ImageAdapter(32, channels=1, design="unet", unet_channels=(8, 16), name="picture")
    sensor = TimeSeriesAdapter(32, 2, patch=2, name="sensor").fit(np.random.default_rng(0).normal(5, 3, (50, 2)))
    return FusionModel(TransformerArgs(dim=32, n_layers=2, n_heads=4, qk_norm=True), [words, picture, sensor],
                       diffusion={"picture": GaussianDiffusion("cosine", 100, "eps"),
                                  "sensor": GaussianDiffusion("linear", 50, "v", weighting="min_snr")},
                       cond_dropout=0.2, loss_weights={"sensor": 2.0})


def _outputs(model):
    """Seeded draws through every generation path, in user units."""
    s_pic = make_sampler("ddim", model.diffusion["picture"], 3, clip_x0=1.0)
    s_sen = make_sampler("ddpm", model.diffusion["sensor"], 4, clip_x0=1.0)
    g = gen.generate(model, ["a two"], s_pic, {"picture": (1, 8, 8)}, force="picture", max_new_tokens=4,
                     temperature=1.0, seed=3)
    return {"picture": g[0].spans("picture")[0], "text": g[0].text,
            "series": gen.sample(model, "sensor", 3, (8, 2), s_sen, seed=5)}


SCRIPT = """
import sys, torch
from fusion_core import FusionModel
sys.path.insert(0, {tests!r})
from test_pretrained import _outputs
model = FusionModel.from_pretrained({folder!r})
torch.save({{"state": model.state_dict(), "outputs": _outputs(model)}}, {out!r})
"""


def test_a_fresh_process_rebuilds_the_model_bit_for_bit(tmp_path):
    model = _model().eval()
    ema = {k: v + 1 for k, v in model.state_dict().items() if v.dtype.is_floating_point}
    model.save_pretrained(tmp_path / "m", metadata={"note": "test"})
    model.save_pretrained(tmp_path / "with_ema", ema=ema)
    code = SCRIPT.format(tests=str(__import__("pathlib").Path(__file__).parent), folder=str(tmp_path / "m"),
                         out=str(tmp_path / "out.pt"))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = torch.load(tmp_path / "out.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, got["state"][k]), k
    want = _outputs(model)
    assert torch.equal(want["picture"], got["outputs"]["picture"]) and want["text"] == got["outputs"]["text"]
    assert torch.equal(want["series"], got["outputs"]["series"])
    # the described model: adapters by registered name, diffusion, loss settings, fitted scaler
    config = json.loads((tmp_path / "m" / "model.json").read_text())
    assert config["adapters"]["words"]["class"] == "text" and config["metadata"] == {"note": "test"}
    loaded = FusionModel.from_pretrained(tmp_path / "m")
    assert loaded.diffusion["sensor"].weighting == "min_snr" and loaded.diffusion["sensor"].T == 50
    assert loaded.cond_dropout == 0.2 and loaded.loss_weights["sensor"] == 2.0
    assert torch.equal(loaded.adapters["sensor"].shift, model.adapters["sensor"].shift)
    text = loaded.adapters["words"]
    assert text.lm_head.weight is text.embedding.weight  # tied weights stay tied
    # EMA weights: preferred when saved, or asked for explicitly
    w = FusionModel.from_pretrained(tmp_path / "with_ema").backbone.norm.weight
    assert torch.equal(w, model.backbone.norm.weight + 1)
    w = FusionModel.from_pretrained(tmp_path / "with_ema", weights="model").backbone.norm.weight
    assert torch.equal(w, model.backbone.norm.weight)
    with pytest.raises(ValueError, match="no EMA weights"):
        FusionModel.from_pretrained(tmp_path / "m", weights="ema")
    half = FusionModel.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    assert half.backbone.norm.weight.dtype == torch.bfloat16 and not half.training


def _edit(folder, fn):
    path = folder / "model.json"
    config = json.loads(path.read_text())
    fn(config)
    path.write_text(json.dumps(config))


def test_what_cannot_be_loaded_is_named(tmp_path):
    model = _model()
    src = tmp_path / "m"
    model.save_pretrained(src)

    def broken(name, fn):
        import shutil

        dst = tmp_path / name
        shutil.copytree(src, dst)
        _edit(dst, fn)
        return dst

    newer = broken("newer", lambda c: c.update(format_version=99))
    with pytest.raises(ValueError, match="model.json is .* bytes, expected"):  # edited after saving
        FusionModel.from_pretrained(newer)
    with pytest.raises(ValueError, match="format version 99 is newer than this fusion-core reads"):
        FusionModel.from_pretrained(newer, verify=False)
    gone = broken("gone", lambda c: c["adapters"]["picture"].update({"class": "my_pkg.images:Missing"}))
    with pytest.raises(ValueError, match="adapter 'picture': .*'my_pkg.images:Missing' is not a registered adapter"):
        FusionModel.from_pretrained(gone, verify=False)
    with pytest.raises(ValueError, match="adapter 'picture': its class 'my_pkg.images:Missing' cannot be loaded"):
        FusionModel.from_pretrained(gone, verify=False, trust_remote_code=True)
    wider = broken("wider", lambda c: c["adapters"]["sensor"]["kwargs"].update(features=3))
    with pytest.raises(ValueError, match=r"adapters.sensor.inp.weight has shape \(32, 4\), the described model \(32, 6\)"):
        FusionModel.from_pretrained(wider, verify=False)
    with pytest.raises(ValueError, match="no saved model here"):
        FusionModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no such folder"):
        FusionModel.from_pretrained(tmp_path / "nothing")
    (src / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes()[:-10])
    with pytest.raises(ValueError, match="model.safetensors is .* bytes, expected .* \\(truncated or changed"):
        FusionModel.from_pretrained(src)


def test_arguments_json_cannot_hold_are_asked_for_again(tmp_path):
    class Tok:  # a tokenizer object: saved by type name only
        def get_vocab_size(self):
            return 300

        def encode(self, s):
            return [ord(ch) % 300 for ch in s]

        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    model = FusionModel(TransformerArgs(dim=16, n_layers=1, n_heads=2), [TextAdapter(16, tokenizer=Tok())])
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"adapter 'text' was built with tokenizer=<Tok>.*adapter_kwargs=\{'text': \{'tokenizer': \.\.\.\}\}"):
        FusionModel.from_pretrained(tmp_path / "m")
    again = FusionModel.from_pretrained(tmp_path / "m", adapter_kwargs={"text": {"tokenizer": Tok()}})
    assert torch.equal(again.adapters["text"].embedding.weight, model.adapters["text"].embedding.weight)


def test_an_adapter_that_hides_a_constructor_argument_cannot_be_saved():
    class Hidden(TimeSeriesAdapter):
        def __init__(self, dim, features, secret=3):
            super().__init__(dim, features)

    with pytest.raises(ValueError, match="__init__ takes 'secret' but the adapter has no attribute 'secret'"):
        Hidden(8, 2).config()


def test_a_run_folder_resolves_to_its_newest_model_and_samples_without_its_data(tmp_path, capsys):
    """A timeseries run on a CSV: after the CSV is deleted, sample and evaluate still work, through
    the run's model/ export (or its newest checkpoint, when that is later)."""
    import pandas as pd

    from fusion_core.engine.cli import main

    rng = np.random.default_rng(0)
    pd.DataFrame({"a": rng.normal(size=300).cumsum(), "b": rng.normal(size=300)}).to_csv(tmp_path / "d.csv", index=False)
    run = tmp_path / "run"
    assert main(["run", "timeseries", "--preset", "tiny", f"run_dir={run}", f"data.source={tmp_path / 'd.csv'}",
                 "eval.after_train=false"]) == 0
    (tmp_path / "d.csv").unlink()
    assert main(["sample", str(run), "--n", "3", "--out", "s.npy"]) == 0
    assert np.load(run / "s.npy").shape == (3, 16, 2)
    assert main(["evaluate", str(run), "eval.metrics=[corr,jsd]", "eval.tsne=false"]) == 0
    from fusion_core.pretrained import resolve

    assert resolve(run) == run / "model"
    assert main(["resume", str(run), "train.steps=9"]) == 2  # training again needs the data; sampling did not
    assert "no such file" in capsys.readouterr().err
    ckpt = sorted((run / "checkpoints").glob("step_*"))[-1]
    loaded = FusionModel.from_pretrained(ckpt)  # a checkpoint folder is a saved model too
    assert set(loaded.adapters) == {"timeseries"}
