"""The multimodal_lm recipe: data layout, noise limiting, packing, generation, CLI, bad input."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from fusion_core import generation as gen
from fusion_core.engine.cli import main
from fusion_core.engine.config import to_object
from fusion_core.diffusion import make_sampler
from fusion_core.masks import dense_mask
from fusion_core.model import Item
from fusion_core.engine.recipe import get_recipe
from fusion_core.recipes.multimodal_lm import data as D
from fusion_core.recipes.multimodal_lm.train import build_model, builtin_examples, encode_example, encode_pair


@pytest.fixture(scope="module")
def setup():
    c = to_object(get_recipe("multimodal_lm").load_config("tiny"))
    torch.manual_seed(0)
    model = build_model(c)
    return c, model


def test_digits_and_prose_split_and_captions():
    tr, te = D.load_digits()
    assert tr.images.shape[1:] == (1, 8, 8) and len(tr.labels) + len(te.labels) == 1797
    assert tr.images.min() >= 0 and tr.images.max() <= 1
    train_prose, test_prose = D.load_prose()
    assert len(train_prose) > 1000 and len(test_prose) > 50 and not set(train_prose) & set(test_prose)
    rng = random.Random(0)
    for d in range(10):
        assert D.parse_digit(D.caption(d, rng)) == d


def test_pair_layouts_and_noise_limiting(setup):
    c, model = setup
    text = model.adapters["text"]
    img = torch.rand(1, 8, 8)
    first = encode_pair(model, "the digit 3", img, image_first=False, noise_limit=500)
    assert int(first[0].payload[-1]) == text.boi("image") and first[1].max_t is None
    cap = encode_pair(model, "the digit 3", img, image_first=True, noise_limit=500)
    assert cap[0].payload.tolist() == [text.special("<bos>"), text.boi("image")] and cap[1].max_t == 500
    assert text.decode(cap[2].payload) == "the digit 3"
    batch = model.collate([first, cap] * 8)
    seen = torch.stack([model.loss(batch, generator=torch.Generator().manual_seed(s)).timesteps["image"]
                        for s in range(30)])
    assert seen[:, 1::2].max() <= 500 and seen[:, 0::2].max() > 500  # only image-first spans limited
    # the BOI position (last of the first text segment) has no LM target
    tgt = model._lm_targets(batch.layout, model._payloads(batch))[0].view(batch.layout.batch_size, -1)
    boi = batch.layout.placements[0].stop - 1
    assert tgt[0, boi] == -100


def test_packing_keeps_documents_apart(setup):
    c, model = setup
    data = builtin_examples(c, model)[:12]
    batch = model.collate(data, max_len=c.data.max_len, pack=True)
    lay = batch.layout
    assert lay.batch_size < len(data)  # several examples per row
    mask = dense_mask(lay.document, lay.span)[:, 0]
    same_doc = lay.document[:, :, None] == lay.document[:, None, :]
    real = ~lay.padding
    assert not (mask & ~same_doc & real[:, :, None]).any()
    for p in lay.placements:  # images never split across rows
        assert p.stop <= lay.seq_len


def test_generation_switches_modes_and_forced_images_have_the_right_size(setup):
    c, model = setup
    sampler = make_sampler("ddim", model.diffusion["image"], 3, clip_x0=1.0)
    gens = gen.generate(model, ["a two", "the digit"], sampler, {"image": (1, 8, 8)}, max_new_tokens=6,
                        force="image")
    for g in gens:
        imgs = g.spans("image")
        assert len(imgs) == 1 and imgs[0].shape == (1, 8, 8) and 0 <= imgs[0].min() and imgs[0].max() <= 1
    out = gen.generate_span(model, ["a two", "a three", "four"], "image", (1, 8, 8), sampler, guidance=3.0)
    assert out.shape == (3, 1, 8, 8)
    caps = gen.caption(model, "image", torch.rand(2, 1, 8, 8), max_new_tokens=5)
    assert len(caps) == 2 and all(isinstance(x, str) for x in caps)


def test_user_examples_keep_the_old_layouts(setup):
    """Caption first, image first (noise-limited), prose: the token layout of Transfusion sec. 3."""
    c, model = setup
    text = model.adapters["text"]
    img = torch.rand(1, 8, 8)
    first = encode_example(model, ["the digit 3", img], c.data)
    assert [it.modality for it in first] == ["text", "image", "text"] and first[1].max_t is None
    assert first[0].payload.tolist() == text.encode("the digit 3", bos=True, append=["<boi:image>"]).tolist()
    assert first[2].payload.tolist() == [text.eoi("image"), text.special("<eos>")]
    cap = encode_example(model, [img, "the digit 3"], c.data)
    assert cap[1].max_t == c.data.noise_limit and text.decode(cap[2].payload) == "the digit 3"
    assert [it.payload.tolist() for it in cap] == [it.payload.tolist() for it in
                                                   encode_pair(model, "the digit 3", img, True, 500)]


def test_bad_input_fails_clearly(setup, tmp_path):
    c, model = setup
    with pytest.raises(ValueError, match="3 channels, expected 1"):
        encode_pair(model, "a two", torch.rand(3, 8, 8), False, 500)
    with pytest.raises(ValueError, match="caption must be a string"):
        encode_pair(model, 7, torch.rand(1, 8, 8), False, 500)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="cannot read image"):
        D.read_image(bad)
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"segments": [{"text": "a two"}, {"image": "missing.png"}]}\n')
    with pytest.raises(ValueError, match="d.jsonl:1 segment 1: image file not found"):
        D.load_jsonl(jl)
    with pytest.raises(ValueError, match="example 0, segment 1: expected a caption string"):
        D.check_example(["a two", 3], "example 0")


def test_jsonl_examples_load(tmp_path):
    arr = (np.random.default_rng(0).uniform(size=(8, 8)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    (tmp_path / "d.jsonl").write_text('{"segments": [{"text": "a two"}, {"image": "x.png"}]}\n')
    ex = D.load_jsonl(tmp_path / "d.jsonl")
    assert ex[0][0] == "a two" and ex[0][1].shape == (1, 8, 8)


def test_cli_on_your_own_rgb_pairs_holds_examples_out(tmp_path, capsys):
    lines = []
    for i in range(20):
        arr = np.zeros((16, 16, 3), np.uint8)
        arr[..., i % 3] = 255
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        lines.append(f'{{"segments": [{{"text": "a {("red", "green", "blue")[i % 3]} square"}}, {{"image": "{i}.png"}}]}}')
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines))
    src = f"data.source={tmp_path / 'pairs.jsonl'}"
    assert main(["run", "multimodal_lm", "--preset", "tiny", src, f"run_dir={tmp_path / 'bad'}", "data.channels=3"]) == 2
    assert "image is 16x16, expected 8x8: set data.image_size=16" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # bad data leaves no run folder behind
    run = tmp_path / "run"
    assert main(["run", "multimodal_lm", "--preset", "tiny", src, f"run_dir={run}", "data.channels=3",
                 "data.image_size=16", "data.held_out=0.2", "eval.per_digit=1"]) == 0
    res = __import__("json").loads((run / "eval.json").read_text())
    assert res["heldout_examples"] == 4 and res["heldout_image_mse"] > 0 and res["heldout_text_bits_per_token"] > 0
    assert "caption_accuracy" not in res and (run / "heldout_grid.png").is_file()
    assert main(["sample", str(run), "--prompt", "a red square", "--image-first"]) == 0
    assert Image.open(run / "samples" / "image_000.png").size == (4 * 17, 4 * 17)  # 16 px + border, 4x


def test_cli_trains_samples_text_image_and_caption(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", "multimodal_lm", "--preset", "tiny", f"run_dir={run}", "eval.after_train=false"]) == 0
    assert main(["sample", str(run), "--prompt", "a handwritten seven", "sample.max_new_tokens=5"]) == 0
    assert main(["sample", str(run), "--prompt", "the digit 3", "--image-first"]) == 0
    assert (run / "samples" / "image_000.png").is_file()
    Image.fromarray((np.random.default_rng(0).uniform(size=(8, 8)) * 255).astype(np.uint8)).save(tmp_path / "d.png")
    assert main(["sample", str(run), "--image", str(tmp_path / "d.png"), "sample.max_new_tokens=5"]) == 0
    out = capsys.readouterr().out
    assert "d.png:" in out and "[image:" in out
    assert main(["sample", str(run), "--prompt", "x" * 2000]) == 2
    assert "exceeds the maximum" in capsys.readouterr().err
    assert main(["evaluate", str(run), "eval.per_digit=1", "eval.captions=3", "eval.sample.steps=2"]) == 0
    assert (run / "report.md").is_file() and (run / "t2i_grid.png").is_file()


def test_rows_without_an_image_keep_their_next_token(setup):
    """While one row draws an image, another row's text continues exactly as if alone."""
    c, model = setup
    text = model.adapters["text"]
    sampler = make_sampler("ddim", model.diffusion["image"], 2, clip_x0=1.0)
    plain = [Item("text", text.encode("plain prose", bos=True))]
    with_boi = [Item("text", text.encode("a two", bos=True, append=["<boi:image>"]))]
    alone = gen.generate(model, [plain], sampler, {"image": (1, 8, 8)}, max_new_tokens=6)
    # row 0's prompt ends with <boi>: it draws an image first while row 1 writes text
    both = gen.generate(model, [with_boi, plain], sampler, {"image": (1, 8, 8)}, max_new_tokens=6)
    assert both[0].segments[0][0] == "image"
    assert both[1].segments == alone[0].segments


def test_examples_from_python_and_from_an_hf_folder(tmp_path):
    """A list of examples or a datasets.Dataset (text + image columns) from Python; the same data
    saved with save_to_disk loads as data.source=hf:FOLDER; evaluation uses the held-out examples
    the run kept, not the source."""
    import datasets

    rng = np.random.default_rng(0)
    pics = [(rng.uniform(size=(8, 8)) * 255).astype(np.uint8) for _ in range(20)]
    examples = [[f"picture {i % 4}", torch.from_numpy(p.astype(np.float32) / 255)[None]] for i, p in enumerate(pics)]
    recipe = get_recipe("multimodal_lm")
    over = ["data.held_out=0.2", "eval.sample.steps=2"]
    run = recipe.run("tiny", [f"run_dir={tmp_path / 'list'}", *over], data=examples)
    res = __import__("json").loads((run / "eval.json").read_text())
    assert res["heldout_examples"] == 4 and (run / "heldout" / "examples.jsonl").is_file()
    ds = datasets.Dataset.from_dict({"text": [f"picture {i % 4}" for i in range(20)],
                                     "image": [Image.fromarray(p) for p in pics]})
    run2 = recipe.run("tiny", [f"run_dir={tmp_path / 'ds'}", *over], data=ds)
    ds.save_to_disk(str(tmp_path / "hf"))
    run3 = tmp_path / "hf_run"
    assert main(["run", "multimodal_lm", "--preset", "tiny", f"run_dir={run3}", f"data.source=hf:{tmp_path / 'hf'}",
                 *over]) == 0
    losses = [[__import__("json").loads(x)["loss"] for x in (r / "metrics.jsonl").read_text().splitlines()]
              for r in (run, run2, run3)]
    assert losses[0] == losses[1] == losses[2]  # the same examples, however they arrived


def test_jsonl_shards_stream_through_training_and_hold_every_kth_example_out(tmp_path):
    """data.streaming: shards read during training (not encoded up front), in data-loading
    workers; every 5th record (data.held_out=0.2) is held out and kept for evaluation."""
    rng = np.random.default_rng(0)
    for s in range(2):
        lines = []
        for i in range(20):
            name = f"s{s}_{i}.png"
            Image.fromarray((rng.uniform(size=(8, 8)) * 255).astype(np.uint8)).save(tmp_path / name)
            lines.append(f'{{"segments": [{{"text": "picture {i % 4}"}}, {{"image": "{name}"}}]}}')
        (tmp_path / f"shard{s}.jsonl").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    assert main(["run", "multimodal_lm", "--preset", "tiny", f"run_dir={run}", f"data.source={tmp_path}/shard*.jsonl",
                 "data.streaming=true", "data.held_out=0.2", "train.workers=2", "eval.sample.steps=2"]) == 0
    res = __import__("json").loads((run / "eval.json").read_text())
    assert res["heldout_examples"] == 8 and res["heldout_image_mse"] > 0
    assert "streaming 2 JSONL shard(s)" in (run / "train.log").read_text()
