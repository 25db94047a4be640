"""FusionModel: the loss equals its parts computed by hand; noise limiting; CFG dropout; generation
helpers against the uncached computation; tiny models overfit."""

import random

import pytest
import torch
import torch.nn.functional as F

from fusion_core import Segment, TransformerArgs, build_layout
from fusion_core.diffusion import GaussianDiffusion, make_sampler
from fusion_core.model import FusionModel, Item
from fusion_core.modalities.image import ImageAdapter
from fusion_core.modalities.text import TextAdapter
from fusion_core.modalities.timeseries import TimeSeriesAdapter

D = 32


def text_image_model(design="linear", **kw):
    torch.manual_seed(0)
    text = TextAdapter(D)
    image = ImageAdapter(D, channels=1, patch_size=2, design=design, unet_channels=(8, 16))
    return FusionModel(TransformerArgs(dim=D, n_layers=2, n_heads=4), [text, image], **kw), text, image


def caption_image(text, image, caption, seed, image_first=False):
    img = image.encode(torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(seed)))
    if image_first:
        return [Item("text", text.encode("", bos=True, append=["<boi:image>"])),
                Item("image", img, max_t=500),
                Item("text", torch.cat([torch.tensor([text.eoi("image")]), text.encode(caption, eos=True)]))]
    return [Item("text", text.encode(caption, bos=True, append=["<boi:image>"])), Item("image", img),
            Item("text", torch.tensor([text.eoi("image"), text.special("<eos>")]))]


def test_loss_equals_parts_computed_by_hand():
    model, text, image = text_image_model()
    model.eval()
    exs = [caption_image(text, image, "a two", 0), caption_image(text, image, "seven", 1, True),
           [Item("text", text.encode("plain prose only", bos=True, eos=True))]]
    batch = model.collate(exs, max_len=64, pack=True)  # packed: all three share one row
    assert batch.layout.batch_size == 1
    n_img = 2
    t = torch.tensor([700, 300])
    noise = [torch.randn(1, 4, 4) for _ in range(n_img)]
    out = model.loss(batch, t={"image": t}, noise={"image": noise})

    # by hand: each example alone, every position embedded explicitly
    diff = model.diffusion["image"]
    ce_sum, ce_n, mses, k = 0.0, 0, [], 0
    with torch.no_grad():
        for ex in exs:
            h, next_ids, img_slices = [], [], []
            for j, it in enumerate(ex):
                if it.modality == "text":
                    h.append(text.embedding(it.payload))
                    ids = it.payload.tolist()
                    next_ids += ids[1:] + [-100]  # no target past a segment's end (BOI included)
                else:
                    x_t = diff.q_sample(it.payload[None], t[k : k + 1], noise[k][None])[0]
                    emb = image.embed([x_t], t[k : k + 1])
                    start = sum(x.shape[0] for x in h)
                    img_slices.append((start, emb, k))
                    h.append(emb.tokens)
                    next_ids += [-100] * emb.tokens.shape[0]
                    k += 1
            lay = build_layout([[Segment(it.modality, model.adapters[it.modality].num_positions(it.payload))
                                 for it in ex]], model.adapters)
            hid = model.backbone(torch.cat(h)[None], lay)[0]
            logits = text.lm_head(hid)
            tgt = torch.tensor(next_ids)
            is_text = torch.tensor(sum([[it.modality == "text"] * model.adapters[it.modality].num_positions(it.payload)
                                        for it in ex], []))
            valid = (tgt >= 0) & is_text
            ce_sum += F.cross_entropy(logits[valid], tgt[valid], reduction="sum").item()
            ce_n += int(valid.sum())
            for start, emb, kk in img_slices:
                n = emb.tokens.shape[0]
                pred = image.head(hid[start : start + n], emb)[0]
                mses.append((pred - noise[kk]).pow(2).mean().item())  # eps-prediction target
    ce = ce_sum / ce_n
    mse = sum(mses) / len(mses)
    assert out.counts == {"text": ce_n, "image": 2}
    assert out.parts["text"].item() == pytest.approx(ce, rel=1e-5)
    assert out.parts["image"].item() == pytest.approx(mse, rel=1e-5)
    assert out.loss.item() == pytest.approx(ce + 5.0 * mse, rel=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weighting_reaches_the_model_loss(prediction):
    """``GaussianDiffusion(weighting="min_snr")`` weights each span's MSE by the Min-SNR factor
    (Hang et al. 2023: min(SNR, gamma) in x0 terms), computed here from alphas_cumprod by hand."""
    def loss(weighting):
        model, text, image = text_image_model(diffusion=GaussianDiffusion("cosine", 1000, prediction, weighting, 5.0))
        model.eval()
        batch = model.collate([caption_image(text, image, "a two", 0), caption_image(text, image, "six", 1)])
        t = torch.tensor([30, 800])
        noise = [torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
        with torch.no_grad():
            return model.loss(batch, t={"image": t}, noise={"image": noise}), model, batch, t, noise

    uniform, *_ = loss("uniform")
    weighted, model, batch, t, noise = loss("min_snr")
    ac = model.diffusion["image"].alphas_cumprod[t]
    snr = ac / (1 - ac)
    x0_weight = snr.clamp(max=5.0)  # min(SNR, 5) on the x0 error, expressed in each target's space
    w = {"eps": x0_weight / snr, "x0": x0_weight, "v": x0_weight / (snr + 1)}[prediction]
    # the per-span MSEs are the same in both runs (same weights, t and noise); only the weights differ
    per_span = []
    with torch.no_grad():
        for i in range(2):
            one = model.loss(model.collate([batch.examples[i]]), t={"image": t[i : i + 1]},
                             noise={"image": noise[i : i + 1]})
            per_span.append(one.parts["image"].item() / float(w[i]))
    assert uniform.parts["image"].item() == pytest.approx(sum(per_span) / 2, rel=1e-4)
    assert weighted.parts["image"].item() == pytest.approx(sum(float(w[i]) * per_span[i] for i in range(2)) / 2,
                                                           rel=1e-4)
    assert weighted.parts["text"].item() == pytest.approx(uniform.parts["text"].item(), rel=1e-6)


def test_boi_position_has_no_lm_target():
    model, text, image = text_image_model()
    ex = caption_image(text, image, "a two", 0)
    batch = model.collate([ex])
    tgt = model._lm_targets(batch.layout, model._payloads(batch))[0].view(1, -1)[0]
    boi_pos = batch.layout.placements[0].stop - 1
    assert tgt[boi_pos] == -100  # BOI's output would predict an image patch, not a token
    assert tgt[boi_pos - 1] == text.boi("image")  # but the token before BOI predicts BOI
    img = batch.layout.placements[1]
    assert (tgt[img.start : img.stop] == -100).all()
    eoi = batch.layout.placements[2].start
    assert tgt[eoi] == text.special("<eos>")


def test_noise_limiting_applies_exactly_to_marked_spans():
    model, text, image = text_image_model()
    exs = [caption_image(text, image, "x", i, image_first=bool(i % 2)) for i in range(8)]
    batch = model.collate(exs)
    marked = torch.tensor([bool(i % 2) for i in range(8)])
    seen = []
    for s in range(40):
        seen.append(model.loss(batch, generator=torch.Generator().manual_seed(s)).timesteps["image"])
    t = torch.stack(seen)
    assert t[:, marked].max() <= 500
    assert t[:, ~marked].max() > 500


def test_condition_dropout_keeps_only_specials_before_the_span():
    model, text, image = text_image_model(cond_dropout=0.5)
    model.train()
    exs = [caption_image(text, image, "a long caption", i) for i in range(40)]
    batch = model.collate(exs, rng=random.Random(0))
    firsts = [ex[0].payload.tolist() for ex in batch.examples]
    dropped = [f for f in firsts if f == [text.special("<bos>"), text.boi("image")]]
    assert 10 < len(dropped) < 30  # about half
    model.eval()
    assert all(len(ex[0].payload) > 2 for ex in model.collate(exs).examples)


def test_bad_batches_rejected():
    model, text, image = text_image_model()
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        model.collate([[Item("audio", torch.zeros(3))]])
    with pytest.raises(ValueError, match="expected an Item"):
        model.collate([[("text", torch.zeros(3))]])
    with pytest.raises(ValueError, match="dim 16, the backbone 32"):
        FusionModel(TransformerArgs(dim=32, n_layers=1, n_heads=4), [TextAdapter(16)])
    with pytest.raises(ValueError, match="loss_weights names unknown modality"):
        FusionModel(TransformerArgs(dim=32, n_layers=1, n_heads=4), [TextAdapter(32)], loss_weights={"img": 1})


# -- generation helpers -------------------------------------------------------------------------

def _full_forward_prediction(model, prefix_items, x_t, t, modality="image"):
    """Uncached: one forward over [prefix, noisy span] laid out normally."""
    a = model.adapters[modality]
    embs = {}
    items = prefix_items + [Item(modality, x_t)]
    batch = model.collate([items])
    for name, its in model._payloads(batch).items():
        ad = model.adapters[name]
        if ad.kind == "continuous":
            embs[name] = ad.embed([it.payload for it in its], torch.tensor([t] * len(its)))
        else:
            embs[name] = ad.embed([it.payload for it in its])
    hid = model._backbone(batch.layout, embs)
    return torch.stack(a.head(batch.layout.gather(hid, modality)[-a.num_positions(x_t):], embs[modality]))[-1]


@pytest.mark.parametrize("design", ["linear", "unet"])
def test_cached_denoise_steps_equal_uncached_forward(design):
    model, text, image = text_image_model(design)
    model.eval()
    prefix = [Item("text", text.encode("draw a two", bos=True, append=["<boi:image>"]))]
    cache, _ = model.prefill([prefix], max_len=64)
    before_k = cache.k.clone()
    for t in (999, 400, 3):
        x_t = torch.randn(1, 1, 4, 4)
        got = model.denoise_step(x_t, torch.tensor([t]), cache, "image")[0]
        with torch.no_grad():
            ref = _full_forward_prediction(model, prefix, x_t[0], t)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(cache.k, before_k) and cache.length == prefix[0].payload.numel()


def test_committed_image_equals_fresh_forward_over_clean_image():
    model, text, image = text_image_model()
    model.eval()
    prefix = [Item("text", text.encode("a two", bos=True, append=["<boi:image>"]))]
    clean = image.encode(torch.rand(1, 4, 4))
    cache, _ = model.prefill([prefix], max_len=64)
    model.commit_span(clean[None], cache, "image")
    logits = model.token_step(torch.tensor([text.eoi("image")]), cache, "text")
    # fresh: prefill over prefix + clean image + EOI at once
    full = prefix + [Item("image", clean), Item("text", torch.tensor([text.eoi("image")]))]
    cache2, last = model.prefill([full], max_len=64)
    torch.testing.assert_close(logits, text.lm_head(last), atol=1e-5, rtol=1e-5)
    n = cache.length
    assert n == cache2.length
    torch.testing.assert_close(cache.k[:, :, :, :n], cache2.k[:, :, :, :n], atol=1e-5, rtol=1e-5)


def test_batched_prompts_of_different_lengths_and_guided_sampling():
    model, text, image = text_image_model()
    model.eval()
    p1 = [Item("text", text.encode("a two", bos=True, append=["<boi:image>"]))]
    p2 = [Item("text", text.encode("the number seven", bos=True, append=["<boi:image>"]))]
    cache, last = model.prefill([p1, p2], max_len=64)
    solo, last1 = model.prefill([p1], max_len=64)
    torch.testing.assert_close(last[0], last1[0], atol=1e-5, rtol=1e-5)
    # CFG: rows = [cond..., uncond...]; the uncond prompt is the specials only
    uncond = [Item("text", text.drop_condition(p1[0].payload))]
    cfg_cache, _ = model.prefill([p1, p2, uncond, uncond], max_len=64)
    sampler = make_sampler("ddim", model.diffusion["image"], steps=4)
    x = model.sample_span(cfg_cache, "image", (1, 4, 4), sampler, guidance_scale=3.0,
                          generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 4, 4) and torch.isfinite(x).all()


# -- overfitting ----------------------------------------------------------------------------------

def _overfit(model, batch, steps, lr, **fixed):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    first = last = None
    for _ in range(steps):
        out = model.loss(batch, **fixed)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.loss.item()
        last = out.loss.item()
    return first, last


def test_text_image_model_overfits_four_examples():
    model, text, image = text_image_model()
    exs = [caption_image(text, image, cap, i) for i, cap in enumerate(["zero", "one", "two", "three"])]
    batch = model.collate(exs)
    fixed = {"t": {"image": torch.tensor([100, 300, 600, 900])},
             "noise": {"image": [torch.randn(1, 4, 4) for _ in range(4)]}}
    first, last = _overfit(model, batch, 300, 3e-3, **fixed)
    assert last < 0.1 * first, (first, last)


def test_timeseries_only_model_overfits_eight_windows():
    torch.manual_seed(0)
    ts = TimeSeriesAdapter(D, features=2).fit(torch.randn(500, 2))
    model = FusionModel(TransformerArgs(dim=D, n_layers=2, n_heads=4), [ts],
                        diffusion=GaussianDiffusion("cosine", 1000, "v"))
    windows = [torch.sin(torch.linspace(0, 6, 16)[:, None] * (i + 1) + torch.tensor([0.0, 1.0])) for i in range(8)]
    batch = model.collate([[Item("timeseries", ts.encode(w))] for w in windows])
    assert batch.layout.attention_kind == "full"  # one bidirectional span: TransFusion's encoder
    fixed = {"t": {"timeseries": torch.arange(8) * 120 + 10},
             "noise": {"timeseries": [torch.randn(16, 2) for _ in range(8)]}}
    first, last = _overfit(model, batch, 300, 3e-3, **fixed)
    assert last < 0.1 * first, (first, last)
