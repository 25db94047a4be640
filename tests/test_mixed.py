"""Recipe `mixed` (#26): a third-party adapter, installed with an entry point, trains, samples and
reports through the CLI with no code beyond the adapter; examples from JSONL, Parquet, Python and a
stream; the config names the modalities and is checked before anything runs."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fusion_core.engine.cli import main
from fusion_core.engine.config import ConfigError
from fusion_core.engine.recipe import get_recipe

DATA = Path(__file__).parent / "data"
PEN = "'model.adapters={text: {class: text}, pen: {class: pen, kwargs: {points: 4}, diffusion: {prediction: x0}}}'"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The pen adapter as an installed package: ``penpkg`` plus a ``.dist-info`` with its entry
    point, on a folder added to the path (what pip would leave in site-packages)."""
    root = tmp_path_factory.mktemp("site")
    (root / "penpkg").mkdir()
    shutil.copy(DATA / "pen_adapter.py", root / "penpkg" / "__init__.py")
    info = root / "penpkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: penpkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[fusion_core.modalities]\npen = penpkg:PenAdapter\n")
    return root


def _strokes(path: Path, n: int = 48) -> Path:
    sys.path.insert(0, str(DATA))
    try:
        from pen_adapter import circle, line
    finally:
        sys.path.remove(str(DATA))
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        kind = "circle" if i % 2 else "line"
        stroke = circle(phase=rng.uniform(0, 6)) if kind == "circle" else line(angle=rng.uniform(0, 6))
        lines.append(json.dumps([{"text": f"a {kind}"}, {"pen": stroke.round(4).tolist()}, {"text": " done"}]))
    path.write_text("\n".join(lines) + "\n")
    return path


def fusion(*args, site: Path, cwd: Path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = " ".join([f"{sys.executable} -m fusion_core.engine.cli", *args])
    return subprocess.run(cmd, shell=True, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_an_installed_adapter_trains_samples_and_reports_through_the_cli(installed, tmp_path):
    data = _strokes(tmp_path / "strokes.jsonl")
    ls = fusion("ls", site=installed, cwd=tmp_path)
    assert "pen" in ls.stdout and "penpkg:PenAdapter" in ls.stdout and "mixed" in ls.stdout, ls.stdout + ls.stderr
    run = tmp_path / "run"
    r = fusion("run", "mixed", "--preset", "tiny", f"data.source={data}", PEN, f"run_dir={run}", "train.steps=8",
               site=installed, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run / "shapes.json").read_text()) == {"pen": [16, 2]}
    report = (run / "report.md").read_text()
    assert "| pen | continuous |" in report and "| text | discrete |" in report
    assert "a stroke of 16 points, straightness" in report  # the adapter's own describe()
    s = fusion("sample", str(run), "--prompt", "'a circle'", "--force", "pen", "--shape", "pen=20,2",
               site=installed, cwd=tmp_path)
    assert s.returncode == 0, s.stderr[-2000:]
    rows = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    pen = [seg["pen"] for seg in rows[0]["segments"] if "pen" in seg]
    assert pen and np.asarray(pen[0]).shape == (20, 2)  # the span's shape as asked
    assert (run / "samples.png").is_file()  # the adapter's own render()


def test_a_dotted_path_needs_trust_and_an_unknown_name_is_one_line(installed, tmp_path):
    data = _strokes(tmp_path / "strokes.jsonl", n=16)
    dotted = "'model.adapters={text: {class: text}, pen: {class: \"pen_adapter:PenAdapter\"}}'"
    r = fusion("run", "mixed", "--preset", "tiny", f"data.source={data}", dotted, f"run_dir={tmp_path / 'r'}",
               site=DATA, cwd=tmp_path)
    assert r.returncode == 2 and "model.adapters.pen: adapter class 'pen_adapter:PenAdapter' is not a registered " \
        "adapter" in r.stderr and "--trust-remote-code" in r.stderr, r.stderr
    assert not (tmp_path / "r").exists()
    r = fusion("run", "mixed", "--preset", "tiny", "--trust-remote-code", f"data.source={data}", dotted,
               f"run_dir={tmp_path / 'r'}", "eval.after_train=false", site=DATA, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    typo = "'model.adapters={text: {class: text}, pen: {class: pne}}'"
    r = fusion("run", "mixed", "--preset", "tiny", f"data.source={data}", typo, site=installed, cwd=tmp_path)
    assert r.returncode == 2 and "unknown adapter 'pne' (did you mean 'pen'?)" in r.stderr, r.stderr


@pytest.mark.parametrize("override, message", [
    ("'model.adapters={text: {class: text, kwarg: {}}}'", "model.adapters.text.kwarg is not a setting (did you mean 'kwargs'?)"),
    ("'model.adapters={text: {kwargs: {}}}'", "model.adapters.text.class must name a registered adapter"),
    ("'model.adapters={text: {class: text}, image: {class: image, diffusion: {prediction: noise}}}'",
     "model.adapters.image.diffusion.prediction must be one of"),
    ("model.writer=caption", "model.writer='caption' is not among model.adapters"),
])
def test_the_modalities_config_is_checked_before_anything_runs(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        get_recipe("mixed").load_config("tiny", overrides=[override.strip("'")])


def test_examples_from_python_parquet_and_a_stream_train_the_same_way(installed, tmp_path, monkeypatch, capsys):
    """Python lists, Parquet and a JSONL stream are the same data to the recipe; a bad item is
    one line naming where it is."""
    import pandas as pd

    monkeypatch.syspath_prepend(str(installed))
    data = _strokes(tmp_path / "strokes.jsonl", n=24)
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    pd.DataFrame({"example": [json.dumps(r) for r in rows]}).to_parquet(tmp_path / "strokes.parquet")
    adapters = PEN.strip("'")
    for i, extra in enumerate([[f"data.source={tmp_path / 'strokes.parquet'}"], ["data.streaming=true",
                                                                                 f"data.source={data}"]]):
        assert main(["run", "mixed", "--preset", "tiny", adapters, *extra, f"run_dir={tmp_path / f'r{i}'}",
                     "eval.after_train=false"]) == 0
    run = get_recipe("mixed").run("tiny", [adapters, f"run_dir={tmp_path / 'py'}", "eval.after_train=false"], data=rows)
    assert (run / "model" / "model.json").is_file()
    bad = [*rows[:3], [{"text": "a circle"}, {"pen": [[0.1, 0.2, 0.3]] * 16}]]
    capsys.readouterr()
    with pytest.raises(ValueError, match=r"example 3: a stroke is \(n, 2\)"):
        get_recipe("mixed").run("tiny", [adapters, f"run_dir={tmp_path / 'bad'}"], data=bad)
    (tmp_path / "bad.jsonl").write_text(data.read_text() + '[{"text": "x"}, {"audio": [1]}]\n')
    assert main(["run", "mixed", "--preset", "tiny", adapters, f"data.source={tmp_path / 'bad.jsonl'}",
                 f"run_dir={tmp_path / 'bad2'}"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:25, item 1: unknown modality 'audio'; this run has ['pen', 'text']" in err, err
    assert not (tmp_path / "bad2").exists()


def test_the_built_in_data_trains_and_evaluates_without_files(tmp_path):
    run = get_recipe("mixed").run("tiny", [f"run_dir={tmp_path / 'run'}"])
    result = json.loads((run / "eval.json").read_text())
    assert set(result["losses"]) == {"text", "image"} and all(np.isfinite(v["loss"]) for v in result["losses"].values())
