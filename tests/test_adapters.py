"""Every built-in adapter through the conformance kit, plus adapter-specific checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from fusion_core.modalities.image import ImageAdapter
from fusion_core.modalities.testing import AdapterConformance
from fusion_core.modalities.text import TextAdapter, WordTokenizer
from fusion_core.modalities.timeseries import TimeSeriesAdapter
from fusion_core.registry import adapter_class, build_adapter, registered_adapters


class TestTextAdapter(AdapterConformance):
    def make_adapter(self, dim):
        return TextAdapter(dim)

    def make_raw(self, index):
        return ["a handwritten seven", "the digit 3 — ünïcödé", "x", "a longer sentence, with commas"][index]

    def bad_raws(self):
        return [[1.5, 2.0], torch.tensor([0, 999]), [-1], "", [["nested"]], torch.tensor([True])]


class TestTextAdapterTied(TestTextAdapter):
    def make_adapter(self, dim):
        return TextAdapter(dim, tie_weights=True)


class TestImageLinear(AdapterConformance):
    def make_adapter(self, dim):
        return ImageAdapter(dim, channels=1, patch_size=2, design="linear")

    def make_raw(self, index):
        g = torch.Generator().manual_seed(index)
        return torch.rand(1, 8, 8 + 4 * index, generator=g)  # arbitrary H, W divisible by p

    def bad_raws(self):
        return [torch.rand(3, 8, 8), torch.rand(1, 7, 8), torch.rand(8, 8), torch.full((1, 8, 8), 2.0),
                torch.full((1, 8, 8), float("nan")), torch.ones(1, 8, 8, dtype=torch.long)]


class TestImageUNet(TestImageLinear):
    def make_adapter(self, dim):
        return ImageAdapter(dim, channels=1, patch_size=4, design="unet", unet_channels=(8, 16, 16))


class TestImageRGBSignedRange(AdapterConformance):
    def make_adapter(self, dim):
        return ImageAdapter(dim, channels=3, patch_size=2, value_range="-11", design="unet",
                            unet_channels=(8, 16))

    def make_raw(self, index):
        return torch.rand(3, 4, 6, generator=torch.Generator().manual_seed(index)) * 2 - 1


class TestTimeSeriesTokenStep(AdapterConformance):
    features, patch, timestep, scaling, design = 3, 1, "token", "minmax", "linear"

    def make_adapter(self, dim):
        a = TimeSeriesAdapter(dim, self.features, patch=self.patch, timestep=self.timestep,
                              scaling=self.scaling, design=self.design, unet_channels=(8, 16, 16))
        return a.fit(np.random.default_rng(0).normal(5, 3, size=(200, self.features)))

    def make_raw(self, index):
        return np.random.default_rng(index + 1).normal(5, 3, size=(16, self.features))

    def bad_raws(self):
        nan = np.zeros((16, self.features))
        nan[3, 0] = np.nan
        return [np.zeros((16, self.features + 1)), np.zeros(16), nan, [["a"] * self.features] * 16,
                np.zeros((15, self.features)) if self.patch > 1 else np.zeros((16, 1, 1))]


class TestTimeSeriesPatchedAdd(TestTimeSeriesTokenStep):
    features, patch, timestep, scaling = 2, 4, "add", "standard"


class TestTimeSeriesAdaLN(TestTimeSeriesTokenStep):
    features, patch, timestep, scaling = 1, 2, "adaln", "minmax"  # one feature must work


class TestTimeSeriesUNetAdaLN(TestTimeSeriesTokenStep):
    features, patch, timestep, scaling, design = 2, 4, "adaln", "minmax", "unet"


class TestTimeSeriesUNetLinearEntry(TestTimeSeriesTokenStep):
    features, patch, timestep, scaling, design = 2, 2, "add", "minmax", "unet"

    def make_adapter(self, dim):
        a = TimeSeriesAdapter(dim, self.features, patch=self.patch, timestep=self.timestep, design="unet",
                              unet_channels=(8, 16), unet_linear_entry=True, unet_linear_exit=True)
        return a.fit(np.random.default_rng(0).normal(5, 3, size=(200, self.features)))


class TestTimeSeriesUNetToken(TestTimeSeriesTokenStep):
    features, patch, timestep, scaling, design = 3, 1, "token", "standard", "unet"  # one level: no halving


# -- registration ---------------------------------------------------------------------------------

def test_builtins_are_registered_through_entry_points():
    known = registered_adapters()
    assert {"text", "image", "timeseries"} <= set(known)
    assert adapter_class("image") is ImageAdapter
    assert isinstance(build_adapter("text", dim=16), TextAdapter)


def test_dotted_path_and_unknown_names():
    assert adapter_class("fusion_core.modalities.timeseries:TimeSeriesAdapter") is TimeSeriesAdapter
    assert adapter_class("fusion_core.modalities.timeseries.TimeSeriesAdapter") is TimeSeriesAdapter
    with pytest.raises(ValueError, match=r"unknown adapter 'audio'; registered: \[.*'image'"):
        adapter_class("audio")
    with pytest.raises(ValueError, match="is not a registered adapter.*trust_remote_code=True"):
        adapter_class("fusion_core.modalities.text:Nope")
    with pytest.raises(ValueError, match="has no attribute"):
        adapter_class("fusion_core.modalities.text:Nope", trust_remote_code=True)
    with pytest.raises(ValueError, match="not a subclass of fusion_core.Adapter"):
        adapter_class("os:system", trust_remote_code=True)


# -- adapter specifics ----------------------------------------------------------------------------

def test_text_specials_and_condition_dropout():
    text = TextAdapter(16, markers=("image", "audio"))
    ids = text.encode("hi", bos=True, append=["<boi:image>"])
    assert ids.tolist() == [text.special("<bos>"), 104, 105, text.boi("image")]
    assert text.drop_condition(ids).tolist() == [text.special("<bos>"), text.boi("image")]
    assert text.decode(ids) == "hi"
    assert text.vocab_size == 256 + 3 + 4
    with pytest.raises(ValueError, match="known:"):
        text.special("<boi:video>")


def test_text_wraps_a_tokenizer_object():
    class Toy:  # the shape of a `tokenizers.Tokenizer`
        def get_vocab_size(self):
            return 10

        def encode(self, s):
            return [len(w) % 10 for w in s.split()]

        def decode(self, ids):
            return " ".join("x" * i for i in ids)

    text = TextAdapter(16, tokenizer=Toy())
    assert text.vocab_size == 10 + 3 + 2
    assert text.encode("ab abc").tolist() == [2, 3]
    assert text.decode(text.encode("ab abc", eos=True)) == "xx xxx"


@settings(max_examples=60)
@given(st.text(max_size=40))
def test_word_tokenizer_round_trips_any_text(text):
    tok = WordTokenizer(WordTokenizer.fit(["a cycle every 12 steps, a cycle", "a cycle every 12 steps."]))
    assert tok.decode(tok.encode(text)) == text


def test_word_tokenizer_takes_a_position_per_known_word_and_bytes_for_the_rest(tmp_path):
    words = WordTokenizer.fit(["It climbs, with a 12-step cycle.", "It falls, with a 12-step cycle."], min_count=2)
    assert words[:4] == [" 12", " a", " cycle", " with"] and " climbs" not in words  # seen once
    text = TextAdapter(16, tokenizer={"words": words}, markers=("timeseries",))
    ids = text.encode("It climbs, with a 12-step cycle.")
    assert len(ids) == 1 + len(" climbs") + 8  # " climbs" (seen once) as bytes, every other piece one id
    assert text.decode(ids) == "It climbs, with a 12-step cycle."
    assert text.vocab_size == 256 + len(words) + 3 + 2
    assert text.drop_condition(text.encode("It climbs", bos=True, append=["<boi:timeseries>"])).tolist() == [
        text.bos_id, text.begin_marker("timeseries")]
    assert TextAdapter(**text.config()).tokenizer.words == tuple(words)  # saved with the model
    with pytest.raises(ValueError, match="tokenizer must be"):
        TextAdapter(16, tokenizer={"vocab": words})
    with pytest.raises(ValueError, match="distinct"):
        WordTokenizer([" a", " a"])


def test_image_patch_count_and_linear_patch_order():
    img = ImageAdapter(8, channels=1, patch_size=2)
    x = img.encode(torch.rand(1, 6, 4))
    assert img.num_positions(x) == 3 * 2
    with pytest.raises(ValueError, match="multiples of patch_size=2"):
        img.num_positions(torch.zeros(1, 5, 4))
    with pytest.raises(ValueError, match="power-of-two"):
        ImageAdapter(8, patch_size=3, design="unet")
    with pytest.raises(ValueError, match="design must be one of"):
        ImageAdapter(8, design="vit")


def test_image_autoencoder_hook():
    class HalfRes:  # a stand-in for a VAE: average-pool to half size, upsample back
        def encode(self, x):
            return torch.nn.functional.avg_pool2d(x, 2)

        def decode(self, z):
            return torch.nn.functional.interpolate(z, scale_factor=2)

    img = ImageAdapter(8, channels=1, patch_size=1, autoencoder=HalfRes(), latent_channels=1)
    x = torch.rand(1, 8, 8)
    z = img.encode(x)
    assert z.shape == (1, 4, 4) and img.num_positions(z) == 16
    assert img.decode(z).shape == (1, 8, 8)


def test_timeseries_scaler_round_trip_and_missing_values():
    data = np.random.default_rng(0).uniform(-50, 200, size=(300, 4))
    ts = TimeSeriesAdapter(8, 4).fit(data)
    p = ts.encode(data[:32])
    assert p.min() >= -1 - 1e-6 and p.max() <= 1 + 1e-6
    np.testing.assert_allclose(ts.decode(p).numpy(), data[:32], rtol=1e-5, atol=1e-3)
    w = data[:8].copy()
    w[2, 1] = np.nan
    with pytest.raises(ValueError, match="pass a mask"):
        ts.encode(w)
    mask = np.ones_like(w, dtype=bool)
    mask[2, 1] = False
    assert ts.encode(w, mask=mask)[2, 1] == 0
    with pytest.raises(ValueError, match="call fit"):
        TimeSeriesAdapter(8, 4).encode(data[:8])
    assert TimeSeriesAdapter(8, 4, timestep="token").num_positions(p) == 33
    assert TimeSeriesAdapter(16, 4, patch=4, timestep="adaln").num_positions(p) == 8
