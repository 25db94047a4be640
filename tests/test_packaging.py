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
