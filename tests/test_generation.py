"""Generation in the core, for any modality names: interleaved text and spans, CFG, captions,
unconditional/conditional spans in user units. Models are untrained; the checks are about what
the functions guarantee (shapes, exact observed values, equal paths, honoured limits)."""

import numpy as np
import pytest
import torch

from fusion_core import (FusionModel, GaussianDiffusion, Guidance, SampleArgs, TransformerArgs, caption, forecast,
                         generate, generate_span, impute, interleave, make_sampler, sample)
from fusion_core.modalities.image import ImageAdapter
from fusion_core.modalities.text import TextAdapter
from fusion_core.modalities.timeseries import TimeSeriesAdapter


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    words = TextAdapter(32, markers=("picture", "sensor"), name="words")
    picture = ImageAdapter(32, channels=1, name="picture")
    sensor = TimeSeriesAdapter(32, 2, name="sensor").fit(np.random.default_rng(0).normal(10, 2, (100, 2)))
    return FusionModel(TransformerArgs(dim=32, n_layers=2, n_heads=4), [words, picture, sensor],
                       diffusion={"picture": GaussianDiffusion("cosine", 100),
                                  "sensor": GaussianDiffusion("cosine", 100, "v")}).eval()


def _sampler(model, name="picture", kind="ddim", steps=3):
    return make_sampler(kind, model.diffusion[name], steps, clip_x0=1.0)


SHAPES = {"picture": (1, 8, 8), "sensor": (8, 2)}


def test_interleave_lays_out_markers_around_any_modality(model):
    w = model.adapters["words"]
    img = torch.rand(1, 8, 8)
    items = interleave(model, ["a cat", ("picture", img), "then", ("sensor", np.ones((8, 2)))])
    assert [it.modality for it in items] == ["words", "picture", "words", "sensor", "words"]
    assert items[0].payload.tolist() == [w.bos_id, *w.encode("a cat").tolist(), w.begin_marker("picture")]
    assert items[2].payload.tolist() == [w.end_marker("picture"), *w.encode("then").tolist(), w.begin_marker("sensor")]
    assert items[4].payload.tolist() == [w.end_marker("sensor"), w.eos_id]
    first = interleave(model, [("picture", img), "a cat"], eos=False)
    assert first[0].payload.tolist() == [w.bos_id, w.begin_marker("picture")]
    with pytest.raises(ValueError, match="segment 0: expected a str, a \\(modality, raw\\) pair or an Item"):
        interleave(model, [3])
    with pytest.raises(ValueError, match="unknown modality 'image'"):
        interleave(model, [("image", img)])


def test_generate_switches_to_spans_of_any_named_modality(model):
    both = {"picture": _sampler(model), "sensor": _sampler(model, "sensor")}
    gens = generate(model, ["a two", "b"], both, SHAPES, force="picture", max_new_tokens=3)
    for g in gens:
        assert g.segments[0][0] == "picture" and g.spans("picture")[0].shape == (1, 8, 8)
        assert g.stop == "max_new_tokens" and g.new_tokens == 3
    gens = generate(model, ["x"], {"sensor": _sampler(model, "sensor")}, {"sensor": SHAPES["sensor"]}, force="sensor",
                    max_new_tokens=1)
    series = gens[0].spans("sensor")[0]
    assert series.shape == (8, 2) and abs(float(series.mean()) - 10) < 20  # user units (the scaler's)
    with pytest.raises(ValueError, match="no sampler given for modality 'sensor'"):
        generate(model, ["x"], {"picture": _sampler(model)}, SHAPES, force="sensor")
    with pytest.raises(ValueError, match="sampler was built for .*prediction='eps'.* modality 'sensor' was trained "
                                         "with .*prediction='v'"):  # one sampler for both: refused, not garbage
        generate(model, ["x"], _sampler(model), SHAPES, force="sensor")


def test_max_new_tokens_is_honoured_and_a_cap_is_reported(model):
    import copy

    model = copy.deepcopy(model)
    head = model.adapters["words"].lm_head.weight
    with torch.no_grad():  # peaked logits that never favour <eos>: every row writes to the limit
        head.mul_(100)
        head[model.adapters["words"].eos_id] = 0
    long = generate(model, ["hello"], max_new_tokens=300, temperature=1.0, seed=1)[0]
    assert long.new_tokens == 300 and long.stop == "max_new_tokens"  # the cache grew past its start
    capped = generate(model, ["hello"], max_new_tokens=300, max_len=20, temperature=1.0, seed=1)[0]
    assert capped.stop == "max_len" and capped.new_tokens == 20 - 6  # 6 prompt positions
    assert long.text.startswith(capped.text)


def test_batched_prompts_with_left_padding_match_single_prompts(model):
    prompts = ["a", "a much longer prompt than the first"]
    both = generate(model, prompts, max_new_tokens=8)
    for p, g in zip(prompts, both):
        alone = generate(model, [p], max_new_tokens=8)[0]
        assert g.segments == alone.segments


def test_guided_spans_agree_between_interleaved_and_direct_generation(model):
    """generate() runs the conditional and unconditional caches in two passes, generate_span() in
    one batched pass: the same guided image either way."""
    sampler = _sampler(model, steps=4)
    inter = generate(model, ["a two", "a three"], sampler, {"picture": SHAPES["picture"]}, force="picture",
                     guidance=3.0, max_new_tokens=0)
    direct = generate_span(model, ["a two", "a three"], "picture", (1, 8, 8), sampler, guidance=3.0)
    for g, d in zip(inter, direct):
        torch.testing.assert_close(g.spans("picture")[0], d, atol=1e-5, rtol=1e-5)
    unguided = generate_span(model, ["a two", "a three"], "picture", (1, 8, 8), sampler)
    assert not torch.allclose(unguided, direct)


def test_guidance_settings_reach_the_sampler(model):
    """A Guidance whose interval holds no visited step is the conditional model alone (scale 1);
    one over every step is the plain scale; SampleArgs builds the same Guidance from config."""
    sampler = _sampler(model, steps=4)
    prompts = ["a two", "a three"]
    cond_only = generate_span(model, prompts, "picture", (1, 8, 8), sampler, guidance=1.0)
    never = generate_span(model, prompts, "picture", (1, 8, 8), sampler, guidance=Guidance(5.0, interval=(1.0, 1.0)))
    torch.testing.assert_close(never, cond_only)
    plain = generate_span(model, prompts, "picture", (1, 8, 8), sampler, guidance=3.0)
    every = generate_span(model, prompts, "picture", (1, 8, 8), sampler, guidance=Guidance(3.0, interval=(0, 1)))
    assert torch.equal(plain, every)
    rescaled = generate_span(model, prompts, "picture", (1, 8, 8), sampler, guidance=Guidance(3.0, rescale=0.7))
    assert not torch.allclose(rescaled, plain)
    args = SampleArgs(steps=4, guidance=3.0, guidance_interval=[0.2, 0.8], guidance_rescale=0.7)
    assert args.guidance_args == Guidance(3.0, (0.2, 0.8), 0.7)
    assert SampleArgs(guidance=0.0, guidance_rescale=0.7).guidance_args is None
    with pytest.raises(ValueError, match="guidance interval"):
        SampleArgs(guidance=3.0, guidance_interval=[0.9, 0.1])


def test_sample_spacing_picks_the_steps_the_sampler_visits(model):
    """``sample.spacing`` reaches the sampler; empty keeps each sampler's own default."""
    from fusion_core.diffusion import respace

    d = model.diffusion["picture"]
    assert SampleArgs(sampler="ddpm", steps=10).make(d).timesteps.tolist() == respace(d.T, 10, "trailing").tolist()
    assert SampleArgs(sampler="ddpm", steps=10).make(d).spacing == "trailing"  # the report names it
    logsnr = SampleArgs(sampler="ddpm", steps=10, spacing="logsnr").make(d).timesteps
    assert logsnr.tolist() == respace(d.T, 10, "logsnr", d.alphas_cumprod.numpy()).tolist() != respace(d.T, 10).tolist()
    assert SampleArgs(sampler="ddim", steps=10, spacing="leading").make(d).timesteps.tolist() == respace(d.T, 10, "leading").tolist()
    with pytest.raises(ValueError, match=r"spacing must be one of .*'logsnr'.* got 'log'"):
        SampleArgs(spacing="log")


def test_captions_and_spans_after_prompts(model):
    caps = caption(model, "sensor", np.random.default_rng(0).normal(10, 2, (3, 8, 2)), max_new_tokens=4)
    assert len(caps) == 3 and all(isinstance(c, str) for c in caps)
    s = _sampler(model, "sensor")
    alone = sample(model, "sensor", 2, (8, 2), s, seed=0)
    prompted = sample(model, "sensor", 2, (8, 2), s, seed=0, prompts=["rising", "falling"])
    assert alone.shape == prompted.shape == (2, 8, 2) and not torch.allclose(alone, prompted)
    with pytest.raises(ValueError, match="1 prompts for 2 spans"):
        sample(model, "sensor", 2, (8, 2), s, prompts=["rising"])


def test_impute_returns_observed_values_exactly_for_series_and_images(model):
    s = _sampler(model, "sensor")
    values = np.random.default_rng(1).normal(10, 2, (4, 8, 2))
    values[0, 2:6, 1] = np.nan
    out = impute(model, "sensor", values, s, resample=2)
    known = np.isfinite(values)
    assert isinstance(out, np.ndarray) and np.isfinite(out).all()
    assert np.array_equal(out[known], values[known]) and out.dtype == values.dtype  # float64 in, float64 out
    fc = forecast(model, "sensor", values[:, :3], 8, s, prompts=["up"] * 4)  # a gap in the history is filled too
    hist = np.isfinite(values[:, :3])
    assert np.array_equal(fc[:, :3][hist], values[:, :3][hist]) and np.isfinite(fc).all()
    img = torch.rand(2, 1, 8, 8)
    img[0, 0, 2:5, 2:5] = float("nan")  # missing pixels
    filled = impute(model, "picture", img, _sampler(model))
    assert torch.isfinite(filled).all() and torch.equal(filled[torch.isfinite(img)], img[torch.isfinite(img)])
    assert 0 <= float(filled.min()) and float(filled.max()) <= 1
    with pytest.raises(ValueError, match="one-step sampler"):
        impute(model, "sensor", values, _sampler(model, "sensor", "dpm_solver", 5), resample=2)
    with pytest.raises(ValueError, match="nothing to forecast"):
        forecast(model, "sensor", values, 8, s)
