"""The library contract (#31), tried as an engineer importing fusion-core with names of their own
(``caption`` text, ``sensor`` v-prediction series, ``photo`` image): every public call checks what
it is given and says so in one line, works in every dtype the model is in, takes a generator, and
leaves the model in the train/eval mode it found it in."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from fusion_core import (FusionModel, GaussianDiffusion, SampleArgs, TransformerArgs, caption, forecast, generate,
                         generate_span, impute, make_sampler, sample, sample_long)
from fusion_core.model import Item
from fusion_core.modalities import ImageAdapter, TextAdapter, TimeSeriesAdapter

SHAPES = {"sensor": (12, 2), "photo": (1, 8, 8)}


def _build():
    torch.manual_seed(0)
    text = TextAdapter(32, markers=("sensor", "photo"), name="caption")
    sensor = TimeSeriesAdapter(32, features=2, name="sensor").fit(np.random.default_rng(0).normal([15, 1000], [5, 8], (500, 2)))
    photo = ImageAdapter(32, channels=1, patch_size=2, name="photo")
    return FusionModel(TransformerArgs(dim=32, n_layers=2, n_heads=4), [text, sensor, photo],
                       diffusion={"sensor": GaussianDiffusion("cosine", 100, "v"),
                                  "photo": GaussianDiffusion("cosine", 100, "eps")})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m") / "model"
    _build().save_pretrained(folder)
    return folder


@pytest.fixture()
def model(saved):
    return FusionModel.from_pretrained(saved)


def _samplers(model, steps=4):
    return {m: make_sampler("ddim", model.diffusion[m], steps, clip_x0=1.0) for m in ("sensor", "photo")}


def _history():
    return np.random.default_rng(1).normal([15, 1000], [5, 8], (2, 6, 2))


# every generation function, called the way a user would (a sampler per modality where it takes one)
CALLS = {
    "sample": lambda m, s, **kw: sample(m, "sensor", 2, SHAPES["sensor"], s["sensor"], **kw),
    "generate_span": lambda m, s, **kw: generate_span(m, ["warm"], "photo", SHAPES["photo"], s["photo"], **kw),
    "caption": lambda m, s, **kw: caption(m, "sensor", _history()[:, :4].repeat(3, 1), max_new_tokens=3, **kw),
    "forecast": lambda m, s, **kw: forecast(m, "sensor", _history(), 12, s["sensor"], **kw),
    "impute": lambda m, s, **kw: impute(m, "sensor", np.where(np.arange(12)[None, :, None] % 3, 15.0, np.nan)
                                        .repeat(2, 0).repeat(2, 2), s["sensor"], **kw),
    "sample_long": lambda m, s, **kw: sample_long(m, "sensor", 2, 18, SHAPES["sensor"], s["sensor"], **kw),
    "generate": lambda m, s, **kw: generate(m, ["a"], s, SHAPES, force="sensor", max_new_tokens=3, **kw),
}


def _values(out):
    if isinstance(out, list):
        return [(g.text, [np.asarray(v) for _, v in g.segments if not isinstance(v, str)]) if hasattr(g, "text") else g
                for g in out]
    return np.asarray(out)


def _equal(a, b) -> bool:
    return repr(_values(a)) == repr(_values(b))


# -- mode, generator ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize("training", [True, False])
def test_every_generation_function_leaves_the_model_in_its_mode(model, name, training):
    model.train(training)
    CALLS[name](model, _samplers(model))
    assert model.training is training and all(m.training is training for m in model.modules())


@pytest.mark.parametrize("name", list(CALLS))
def test_the_same_generator_state_gives_the_same_output(model, name):
    s = _samplers(model)
    a = CALLS[name](model, s, generator=torch.Generator().manual_seed(7))
    b = CALLS[name](model, s, generator=torch.Generator().manual_seed(7))
    assert _equal(a, b)
    if name not in ("caption", "generate"):  # greedy text is the same under any generator
        c = CALLS[name](model, s, generator=torch.Generator().manual_seed(8))
        assert not _equal(a, c)


# -- precision ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_a_model_in_another_dtype_generates_and_computes_its_loss(saved, dtype):
    ref = FusionModel.from_pretrained(saved)
    low = FusionModel.from_pretrained(saved, torch_dtype=dtype)
    moved = FusionModel.from_pretrained(saved).to(dtype)
    assert low.dtype == moved.dtype == dtype and ref.dtype == torch.float32
    sensor = low.adapters["sensor"]
    assert sensor.shift.dtype == sensor.scale.dtype == torch.float32  # user units keep float32's precision
    assert torch.equal(sensor.shift, ref.adapters["sensor"].shift)
    assert low.diffusion["sensor"].alphas_cumprod.dtype == torch.float64  # tables stay double
    s = _samplers(ref)
    # bf16 keeps ~3 significant digits: outputs of 4 DDIM steps of an untrained model agree within a
    # stated share of the data's spread (the sensor's scaler: 5 and 8 units per feature)
    tol = {torch.bfloat16: 0.25, torch.float16: 0.05, torch.float64: 1e-4}[dtype]
    for name in ("sample", "forecast", "generate_span"):
        for m in (low, moved):
            got = np.asarray(CALLS[name](m, s, seed=3), dtype=np.float64)
            want = np.asarray(CALLS[name](ref, s, seed=3), dtype=np.float64)
            assert got.dtype == want.dtype and np.isfinite(got).all()
            spread = want.std() or 1.0
            assert np.abs(got - want).mean() < tol * spread, (name, np.abs(got - want).mean(), spread)
    assert isinstance(CALLS["caption"](low, s)[0], str) and CALLS["generate"](low, s)[0].stop
    text = low.adapters["caption"]
    ex = [Item("caption", text.encode("hot", bos=True, append=["<boi:sensor>"])),
          Item("sensor", low.adapters["sensor"].encode(_history()[0].repeat(2, 0))),
          Item("caption", text.encode("", append=["<eoi:sensor>", "<eos>"]))]
    g = torch.Generator().manual_seed(0)
    loss = low.loss(low.collate([ex]), generator=g).loss
    g = torch.Generator().manual_seed(0)
    want = ref.loss(ref.collate([ex]), generator=g).loss
    assert torch.isfinite(loss) and abs(loss.item() - want.item()) < {torch.bfloat16: 0.05, torch.float16: 0.01,
                                                                       torch.float64: 1e-5}[dtype] * want.item()


# -- samplers per modality ---------------------------------------------------------------------------

def test_one_sampler_is_refused_for_another_modality_and_a_spec_builds_one_each(model):
    photo_sampler = _samplers(model)["photo"]
    with pytest.raises(ValueError, match="sampler was built for .*prediction='eps'.* 'sensor' was trained with "
                                         ".*prediction='v'"):
        generate(model, ["a"], photo_sampler, SHAPES, force="sensor", max_new_tokens=1)
    with pytest.raises(ValueError, match="sampler was built for"):
        sample(model, "sensor", 1, SHAPES["sensor"], photo_sampler)
    spec = SampleArgs(sampler="ddim", steps=4)
    out = generate(model, ["a", "b"], spec, SHAPES, force="sensor", max_new_tokens=2)
    series = out[0].spans("sensor")[0]
    assert series.shape == (12, 2) and abs(float(series[:, 1].mean()) - 1000) < 100  # hPa, not ±1e6


# -- what each public function refuses, in one line ----------------------------------------------------

MISUSE = [
    # (call, expected error, fragment of the message)
    (lambda m, s: forecast(m, "sensor", np.zeros((2, 6, 3)), 12, s["sensor"]), ValueError, "windows of shape (T, 2)"),
    (lambda m, s: sample(m, "sensor", 2, (12, 3), s["sensor"]), ValueError, "windows of shape (T, 2)"),
    (lambda m, s: generate_span(m, ["x"], "photo", (1, 7, 7), s["photo"]), ValueError, "multiples of patch_size=2"),
    (lambda m, s: generate_span(m, ["x"], "photo", (3, 8, 8), s["photo"]), ValueError, "has 3 channels, expected 1"),
    (lambda m, s: sample(m, "caption", 2, (4,), s["sensor"]), ValueError, "'caption' is discrete"),
    (lambda m, s: forecast(m, "sensor", np.zeros((6, 2)), 12, s["sensor"]), ValueError, "is one history of 6 steps"),
    (lambda m, s: generate_span(m, ["x"], "image", (1, 8, 8), s["photo"]), ValueError, "unknown modality 'image'"),
    (lambda m, s: generate(m, "hello"), TypeError, "one prompt per row, got a str"),
    (lambda m, s: generate_span(m, "hello", "photo", (1, 8, 8), s["photo"]), TypeError, "got a str"),
    (lambda m, s: generate_span(m, ["x"], "photo", (1, 8, 8), s["photo"], guidance=-1), ValueError, "guidance must"),
    (lambda m, s: generate_span(m, ["x"], "photo", (1, 8, 8), s["photo"], guidance=float("nan")), ValueError,
     "guidance must be a finite number"),
    (lambda m, s: sample(m, "audio", 2, (12, 2), s["sensor"]), ValueError, "unknown modality 'audio'"),
    (lambda m, s: sample(m, 3, 2, (12, 2), s["sensor"]), TypeError, "modality must be a name"),
    (lambda m, s: sample(m, "sensor", -1, (12, 2), s["sensor"]), ValueError, "n must be an integer >= 0"),
    (lambda m, s: sample(m, "sensor", 2.5, (12, 2), s["sensor"]), ValueError, "n must be an integer"),
    (lambda m, s: sample(m, "sensor", 2, "12x2", s["sensor"]), TypeError, "shape must be a tuple of ints"),
    (lambda m, s: sample(m, "sensor", 2, (12, 2), "ddim"), TypeError, "sampler must be a Sampler"),
    (lambda m, s: sample(m, "sensor", 2, (12, 2), s["sensor"], generator=7), TypeError, "torch.Generator"),
    (lambda m, s: forecast(m, "sensor", np.full((2, 6, 2), np.nan), 12, s["sensor"]), ValueError, "no observed value"),
    (lambda m, s: forecast(m, "sensor", [["a", "b"]] * 6, 12, s["sensor"]), TypeError, "numbers only, got str"),
    (lambda m, s: forecast(m, "sensor", _history(), 4, s["sensor"]), ValueError, "leaves nothing to forecast"),
    (lambda m, s: impute(m, "sensor", np.zeros((2, 12, 2)), s["sensor"], mask=np.ones((2, 12))), ValueError,
     "mask has shape"),
    (lambda m, s: impute(m, "sensor", torch.zeros(2, 12, 2, dtype=torch.bool), s["sensor"]), TypeError, "bool"),
    (lambda m, s: caption(m, "sensor", np.zeros((2, 12, 3))), ValueError, "raws[0]: window must have shape (T, 2)"),
    (lambda m, s: caption(m, "sensor", np.full((1, 12, 2), np.nan)), ValueError, "NaN"),
    (lambda m, s: caption(m, "sensor", "a series"), TypeError, "raws is a batch"),
    (lambda m, s: generate(m, ["a"], s, {"sensor": (12, 3)}, force="sensor"), ValueError, "windows of shape (T, 2)"),
    (lambda m, s: generate(m, ["a"], s, {"caption": (4,)}), ValueError, "'caption' is discrete"),
    (lambda m, s: generate(m, ["a"], max_new_tokens=-1), ValueError, "max_new_tokens must be an integer >= 0"),
    (lambda m, s: generate(m, ["a"], temperature=float("nan")), ValueError, "temperature must be a finite number"),
    (lambda m, s: generate(m, [3]), ValueError, "a prompt) is a str or a non-empty list of segments"),
    (lambda m, s: generate(m, [[("sensor", np.zeros((12, 3)))]]), ValueError, "window must have shape (T, 2)"),
    (lambda m, s: generate(m, ["a"], writer="sensor"), ValueError, "writer 'sensor' must be a discrete adapter"),
    (lambda m, s: sample_long(m, "sensor", 2, 18, (12, 2), s["sensor"], overlap=12), ValueError, "overlap must be"),
    (lambda m, s: FusionModel(TransformerArgs(dim=32, n_layers=1, n_heads=4), [TextAdapter(32), TextAdapter(32)]),
     ValueError, "two adapters are named 'text'"),
    (lambda m, s: FusionModel(TransformerArgs(dim=32, n_layers=1, n_heads=4), [TimeSeriesAdapter(16, 2)]),
     ValueError, "has dim 16, the backbone 32"),
    (lambda m, s: m.adapters["sensor"].encode(np.zeros((12, 3))), ValueError, "window must have shape (T, 2)"),
    (lambda m, s: m.adapters["photo"].encode(np.zeros((3, 8, 8), dtype=np.float32)), ValueError, "has 3 channels"),
    (lambda m, s: m.adapters["caption"].encode([1, 2, 10**6]), ValueError, "out of range"),
]
INTERNALS = ("mat1", "mat2", "Einops", "einops", "split_with_sizes", "Expected tensor", "stack expects", "must match the size",
             "Traceback", "object has no attribute", "NoneType")


@pytest.mark.parametrize("case", range(len(MISUSE)))
def test_misuse_is_one_line_naming_what_was_expected(model, case):
    call, error, fragment = MISUSE[case]
    model.train()
    with pytest.raises(error) as e:
        call(model, _samplers(model))
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg and not any(x in msg for x in INTERNALS), msg
    assert model.training  # a refused call changes nothing, the mode included


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(modality=st.sampled_from(["sensor", "photo"]),
       shape=st.lists(st.integers(0, 20), min_size=0, max_size=4).map(tuple))
def test_any_shape_either_works_or_is_refused_in_one_line(model, modality, shape):
    s = _samplers(model, steps=2)
    try:
        out = sample(model, modality, 1, shape, s[modality])
    except (ValueError, TypeError) as e:
        assert "\n" not in str(e) and not any(x in str(e) for x in INTERNALS), str(e)
        assert modality in str(e) or "shape" in str(e)
    else:
        assert out.shape[1:] == shape


def test_exported_callables_say_what_they_raise():
    """Every callable fusion_core exports whose code raises has a Google-style ``Raises:``."""
    import inspect

    import fusion_core
    import fusion_core.generation as gen
    import fusion_core.modalities as mods

    missing = []
    for module in (fusion_core, gen, mods):
        for name in module.__all__:
            obj = getattr(module, name)
            if not callable(obj) or isinstance(obj, type) and issubclass(obj, BaseException):
                continue
            target = obj.__init__ if isinstance(obj, type) else obj
            try:
                src = inspect.getsource(target)
            except (TypeError, OSError):
                continue
            doc = (inspect.getdoc(obj) or "") + (inspect.getdoc(target) or "")
            if "raise " in src and "Raises:" not in doc:
                missing.append(f"{module.__name__}.{name}")
    assert not missing, f"no Raises: section: {missing}"


def test_built_in_adapters_import_from_the_modalities_package():
    from fusion_core.modalities import text, timeseries

    assert TextAdapter is text.TextAdapter and TimeSeriesAdapter is timeseries.TimeSeriesAdapter


def test_a_warmup_longer_than_the_run_is_clamped_with_a_warning(tmp_path):
    from fusion_core.engine.trainer import OptimArgs, Trainer, TrainArgs

    m = _build()
    text = m.adapters["caption"]
    data = [[Item("caption", text.encode("a b c", bos=True, eos=True))]] * 4
    with pytest.warns(UserWarning, match=r"train.optim.warmup=4000 is longer than half the run \(train.steps=40\): "
                                         "warming up over 4 steps"):
        t = Trainer(m, data, lambda model, b, seeds: model.collate(b, seeds=seeds),
                    TrainArgs(steps=40, batch_size=2, progress=False, optim=OptimArgs()), tmp_path)
    assert t.args.optim.warmup == 4


def test_a_short_runs_ema_samples_are_no_worse_than_the_raw_weights(tmp_path):
    """The EMA warm-up: after 150 steps at decay 0.999, the EMA's samples are as good as the raw
    weights' by a simple statistic (mean |step-to-step change| against the real windows'); without
    the warm-up 86% of the random initialisation is still in the average and they are far worse."""
    from fusion_core.engine.ema import EMA
    from fusion_core.engine.trainer import OptimArgs, Trainer, TrainArgs
    from fusion_core.recipes.timeseries.data import sine

    real = sine(512, 16, 2, seed=0)
    jitter = lambda x: float(np.abs(np.diff(np.asarray(x), axis=1)).mean())  # noqa: E731

    def run(warmup: bool) -> tuple[float, float]:
        torch.manual_seed(0)
        a = TimeSeriesAdapter(32, 2).fit(real)
        m = FusionModel(TransformerArgs(dim=32, n_layers=2, n_heads=4), [a], GaussianDiffusion("cosine", 100, "v"))
        data = [[Item("timeseries", w)] for w in a.encode(real)]
        args = TrainArgs(steps=150, batch_size=32, progress=False, ema_decay=0.999, ema_warmup=warmup,
                         ckpt_every=1000, optim=OptimArgs(lr=2e-3, warmup=10, schedule="constant", weight_decay=0.0))
        t = Trainer(m, data, lambda model, b, seeds: model.collate(b, seeds=seeds), args, tmp_path / str(warmup))
        for _ in range(args.steps):
            t.train_step()
        s = make_sampler("ddim", m.diffusion["timeseries"], 10, clip_x0=1.0)
        raw = jitter(sample(m, "timeseries", 64, (16, 2), s, seed=1))
        ema = t.ema
        assert isinstance(ema, EMA)
        ema.copy_to(m)
        return raw, jitter(sample(m, "timeseries", 64, (16, 2), s, seed=1))

    target = jitter(real)
    raw, ema = run(warmup=True)
    assert abs(ema - target) <= abs(raw - target) * 1.1 + 0.01, (target, raw, ema)
    _, cold = run(warmup=False)
    assert abs(cold - target) > 3 * abs(ema - target), (target, ema, cold)


def test_recipes_take_the_same_input_types_from_python(tmp_path):
    """One coercion layer (fusion_core.engine.inputs): a tensor, an array and nested lists mean the
    same series; a list of dicts, of tuples and a dict of columns the same pairs; a NumPy image the
    same image as a tensor."""
    import pandas as pd

    from fusion_core.engine.config import to_object
    from fusion_core.engine.recipe import get_recipe

    def dataset(name, data):
        r = get_recipe(name)
        return r.setup(to_object(r.load_config("tiny")), tmp_path, data).dataset

    series = np.random.default_rng(0).normal(size=(400, 2))
    forms = [series, torch.tensor(series), series.tolist(), pd.DataFrame(series, columns=["a", "b"])]
    sizes = {len(dataset("timeseries", f)) for f in forms}
    assert len(sizes) == 1, sizes
    caps = ["a flat line", "a rising line"] * 20
    vals = [np.zeros(32).tolist(), np.linspace(0, 1, 32).tolist()] * 20
    pairs = [list(zip(caps, vals)), [{"caption": c, "series": v} for c, v in zip(caps, vals)],
             {"caption": caps, "series": vals}, pd.DataFrame({"caption": caps, "series": vals})]
    sizes = {len(dataset("text_timeseries", f)) for f in pairs}
    assert len(sizes) == 1, sizes
    rng = np.random.default_rng(0)
    imgs = [rng.random((1, 8, 8)).astype(np.float32) for _ in range(24)]
    as_np = [["a picture", im] for im in imgs]
    as_torch = [["a picture", torch.from_numpy(im)] for im in imgs]
    a, b = dataset("multimodal_lm", as_np), dataset("multimodal_lm", as_torch)
    assert len(a) == len(b) and all(torch.equal(x.payload, y.payload) for ex, ey in zip(a, b) for x, y in zip(ex, ey))
    with pytest.raises(ValueError, match="numbers only, got str"):
        dataset("timeseries", [["1", "2"]] * 50)
