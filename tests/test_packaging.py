import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_installed_names_import():
    import fusion_core.diffusion
    import fusion_core.modalities
    import fusion_core.recipes

    assert Path(fusion_core.modalities.__file__).parent == ROOT / "modalities"
    assert Path(fusion_core.recipes.__file__).parent == ROOT / "recipes"
    assert fusion_core.diffusion.GaussianDiffusion


def test_top_level_names_are_not_claimed(tmp_path):
    # `import modalities` / `import recipes` must not resolve to this project (PyPI has both
    # names). Ask a fresh interpreter outside the checkout, so the cwd is not on sys.path.
    code = (
        "import importlib.util, sys\n"
        "for n in ('modalities', 'recipes'):\n"
        "    s = importlib.util.find_spec(n)\n"
        "    print(n, s.origin if s else None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        name, origin = line.split(" ", 1)
        assert origin == "None" or not Path(origin).resolve().is_relative_to(ROOT), (
            f"`import {name}` resolves into this repository: {origin}"
        )


def test_core_never_imports_adapters_or_recipes():
    bad = re.compile(r"^\s*(from|import)\s+(fusion_core\.(modalities|recipes)|\.+(modalities|recipes))\b", re.M)
    for path in (ROOT / "fusion_core").rglob("*.py"):
        hit = bad.search(path.read_text())
        assert hit is None, f"{path} imports {hit.group(0).strip()}: core must not depend on adapters/recipes"


def test_a_built_wheel_ships_every_package_the_guides_and_the_type_marker(tmp_path):
    """What a non-editable install gets: every subpackage, presets, py.typed and the guides."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    names = set(zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist())
    for path in ("fusion_core/generation/spans.py", "fusion_core/diffusion/repaint.py", "fusion_core/py.typed",
                 "fusion_core/docs/python-api.md", "fusion_core/recipes/presets/timeseries/quick.yaml",
                 "fusion_core/recipes/timeseries/evaluate.py", "fusion_core/recipes/text_timeseries/evaluate.py",
                 "fusion_core/recipes/presets/text_timeseries/quick.yaml", "fusion_core/modalities/testing.py"):
        assert path in names, path
    local = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fusion_core").rglob("*.py")}
    missing = {p for p in local if p not in names}
    assert not missing, f"modules left out of the wheel: {sorted(missing)}"
