"""Vision-language experts on a tiny Qwen2-VL: sampler and trainer agree with images, records with images,
a 1-cycle text + image + video run with OPD across modalities, and the merged model answers an image prompt."""

import base64
import importlib.util
import io
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dataclasses import replace

from tests.trainer.test_train_smoke import check_samples
from contract.spec import GrpoSpec, JsonlDomain, OpdSpec, SpecError, TinyModelSpec, parse_spec
from trainer.algos import merge_state_dicts
from trainer.checkpoint import save_checkpoint
from trainer.domains import BUILTINS, DomainError, load_domain
from trainer.domains.visual import png
from trainer.local import train_local
from trainer.models import load_pretrained
from trainer.rollout import HFEngine, token_stats
from trainer.update import cross_batch
from trainer.tiny_vl import build_tiny_vl, build_vl_processor
from trainer.vlm import VisionProcessor, VisualTokenBatch, encode_visual

SMALL = TinyModelSpec(hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64, warmstart_max_steps=0)


@pytest.fixture(scope="module")
def domains():
    return {k: load_domain(k, 0) for k in ("builtin:arith", "builtin:shapes", "builtin:motion")}


@pytest.fixture(scope="module")
def tiny_vl(domains):
    processor = build_vl_processor(set().union(*(d.alphabet() for d in domains.values())))
    return build_tiny_vl(SMALL, processor, seed=0), processor


def test_visual_domains_are_seeded_disjoint_and_verifiable(domains):
    for key in ("builtin:shapes", "builtin:motion"):
        d = domains[key]
        assert {s.pool_key for s in d.train}.isdisjoint(s.pool_key for s in d.eval)
        s = d.eval[0]
        assert s.images and d.score(s.answer, s) == 1.0 and d.score(s.answer + "x", s) == 0.0
        other = load_domain(key, 1)
        assert {s.pool_key for s in other.train}.isdisjoint(s.pool_key for s in d.eval)  # one held-out pool
        fresh = BUILTINS[key](0)  # not the cache: seeded, so the same pictures again
        assert [s.pool_key for s in fresh.eval] == [s.pool_key for s in d.eval]
    motion = domains["builtin:motion"]
    assert {len(s.images) for s in motion.train[:200]} == {3, 4}  # a clip is its frames
    with Image.open(__import__("io").BytesIO(motion.train[0].images[0])) as im:
        assert im.size == (28, 28)  # one vision token a frame after the 2×2 merge
    assert {s.prompt for s in motion.train} == {"v?", "d?", "n?"} and len(motion.train[0].images) in (3, 4)


def _cell_colour(im, x: int, y: int) -> str:
    r, g, b = im.getpixel((x, y))
    return "r" if r > 150 > g else "g" if g > 120 > r else "b" if b > 150 > r else "-"


def _solve_shapes(sample) -> str:
    """An independent reader of a board picture: the colour at each 14-px cell's centre."""
    im = Image.open(io.BytesIO(sample.images[0])).convert("RGB")
    board = "".join(_cell_colour(im, 14 * c + 7, 14 * r + 7) for r in range(4) for c in range(4))
    q = sample.prompt
    if q.startswith("@"):
        return board[(int(q[1]) - 1) * 4 + int(q[2]) - 1]
    if q == "r>b?":
        return "R" if board.count("r") > board.count("b") else "B" if board.count("b") > board.count("r") else "="
    return str(board.count(q[0]))


def _solve_motion(sample) -> str:
    """An independent reader of a clip: the red square's cell in each 28×28 frame (4 × 4 cells of 7 px),
    constant velocity along one row."""
    cells = []
    for frame in sample.images:
        im = Image.open(io.BytesIO(frame)).convert("RGB")
        assert im.size == (28, 28)
        hits = [(r, c) for c in range(4) for r in range(4) if _cell_colour(im, 7 * c + 3, 7 * r + 3) == "r"]
        assert len(hits) == 1
        cells.append(hits[0])
    assert len({r for r, _ in cells}) == 1
    cols = [c for _, c in cells]
    v = cols[1] - cols[0]
    assert all(b - a == v for a, b in zip(cols, cols[1:]))
    moved = cols[-1] - cols[0]
    return {"d?": str(moved), "v?": "R" if moved > 0 else "L" if moved < 0 else "S",
            "n?": f"{cells[0][0] + 1}{cols[-1] + v + 1}"}[sample.prompt]


@pytest.mark.parametrize("key, solve", [("builtin:shapes", _solve_shapes), ("builtin:motion", _solve_motion)])
def test_visual_labels_match_what_the_pictures_show(domains, key, solve):
    d = domains[key]
    for s in (*d.train[:300], *d.eval[:100]):
        assert s.answer == solve(s), s


def test_logprobs_match_between_sampler_and_trainer_with_images(domains, tiny_vl):
    model, processor = tiny_vl
    torch.manual_seed(0)
    prompts = [domains["builtin:shapes"].train[0].model_input, domains["builtin:motion"].train[1].model_input,
               domains["builtin:arith"].train[0].model_input]
    roll = HFEngine(model, processor).sample(prompts, 4, temperature=1.0, max_new_tokens=5)
    assert isinstance(roll.tokens, VisualTokenBatch) and roll.tokens.size == 12
    trainer = token_stats(model, roll.tokens)[0] * roll.tokens.completion_mask      # shared prompt rows
    assert torch.allclose(trainer, roll.logp, atol=1e-5)
    rows = torch.tensor([0, 4, 8, 1, 5])                                             # no sharing
    alone = token_stats(model, roll.tokens.select(rows))[0] * roll.tokens.completion_mask[rows]
    assert torch.allclose(alone, roll.logp[rows], atol=1e-5)
    # the pixels reach the model: the same tokens after another picture score differently
    other = domains["builtin:shapes"].train[5].model_input
    ids, mask, visual = encode_visual(processor, [prompts[0], other])
    assert ids.shape[0] == 2 and visual.pixel_values is not None
    b = VisualTokenBatch(ids, mask, roll.tokens.completion_ids[:2], roll.tokens.completion_mask[:2],
                         visual=visual, row_prompt=torch.tensor([1, 1]))
    a = token_stats(model, roll.tokens.select(torch.tensor([0, 1])))[0]
    assert not torch.allclose(token_stats(model, b)[0][0], a[0])


def test_a_trimmed_micro_batch_keeps_its_images(domains, tiny_vl):
    """The update trims every micro-batch of padding (TokenBatch.trimmed): a batch with pictures must stay
    one, with the same per-token logprobs on the positions it keeps."""
    model, processor = tiny_vl
    torch.manual_seed(0)
    prompts = [domains["builtin:shapes"].train[0].model_input, domains["builtin:arith"].train[0].model_input]
    roll = HFEngine(model, processor).sample(prompts, 2, temperature=1.0, max_new_tokens=5)
    rows = torch.tensor([2, 3])  # the text prompt's rows: the shorter prompt, so left padding to trim
    part = roll.tokens.select(rows)
    cut = part.trimmed()
    assert isinstance(cut, VisualTokenBatch) and cut.visual is part.visual
    width = cut.completion_ids.shape[1]
    want = token_stats(model, part)[0][:, :width] * part.completion_mask[:, :width]
    assert torch.allclose(token_stats(model, cut)[0] * cut.completion_mask, want, atol=1e-5)


def test_records_with_images_and_frames(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.new("RGB", (28, 28), (80 * i, 0, 0)).save(tmp_path / "img" / f"{i}.png")
        (tmp_path / f"clip{i}").mkdir()
        for f in range(3):
            Image.new("RGB", (28, 28), (0, 80 * f, i)).save(tmp_path / f"clip{i}" / f"f{f}.png")
    rows = [{"q": "red?", "a": str(i), "image": f"img/{i}.png", "frames": f"clip{i}"} for i in range(3)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    d = load_domain(JsonlDomain(path=str(path), prompt_field="q", answer_field="a", image_field="image"), 0)
    assert len(d.train) + len(d.eval) == 3 and all(len(s.images) == 1 for s in d.train)  # same text, 3 pictures
    v = load_domain(JsonlDomain(path=str(path), prompt_field="q", answer_field="a", video_field="frames"), 0)
    assert len(v.train[0].images) == 3 and v.train[0].images[0].endswith("f0.png")


def write_clip(path: Path, reds: list[int], codec: str = "mpeg4") -> None:
    """A 32×32 video of len(reds) frames, frame i all of red level reds[i], written with PyAV itself."""
    av = pytest.importorskip("av")
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for red in reds:
            pixels = np.zeros((32, 32, 3), np.uint8)
            pixels[..., 0] = red
            out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        out.mux(stream.encode())


def test_video_files_are_decoded_into_uniformly_sampled_frames(tmp_path):
    reds = [20 * i for i in range(10)]
    for i in range(3):
        write_clip(tmp_path / f"c{i}.mp4", reds)
    write_clip(tmp_path / "c3.webm", reds, codec="libvpx")
    rows = [{"prompt": f"clip {i}?", "answer": str(i), "video": f"c{i}.{'webm' if i == 3 else 'mp4'}"} for i in range(4)]
    path = tmp_path / "v.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    d = load_domain(JsonlDomain(path=str(path), video_field="video", video_frames=4, eval_fraction=0.25), 0)
    for s in d.train + d.eval:
        assert len(s.images) == 4 and all(isinstance(f, bytes) for f in s.images)
        got = [Image.open(io.BytesIO(f)).convert("RGB").getpixel((16, 16))[0] for f in s.images]
        # frames 1, 3, 6, 8 of 10 (the middle of four equal spans), within the codec's rounding
        assert all(abs(g - reds[i]) <= 6 for g, i in zip(got, (1, 3, 6, 8))), got
    many = load_domain(JsonlDomain(path=str(path), video_field="video", video_frames=32, eval_fraction=0.25), 0)
    assert len(many.train[0].images) == 10  # a shorter video gives all its frames


@pytest.mark.parametrize("bad, needle", [("gone.mp4", "video file not found: gone.mp4"),
                                         ("junk.mp4", "video file junk.mp4 does not decode"),
                                         ("noav", "video file ok.mp4 needs PyAV to decode: pip install 'copd[video]'")])
def test_a_bad_video_file_fails_with_one_line_naming_the_record(tmp_path, monkeypatch, bad, needle):
    write_clip(tmp_path / "ok.mp4", [0, 100, 200])
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 20)
    if bad == "noav":
        monkeypatch.setitem(__import__("sys").modules, "av", None)  # `import av` raises ImportError
    path = tmp_path / "v.jsonl"
    rows = [{"prompt": "p1", "answer": "1", "video": [f"ok.mp4"]},
            {"prompt": "p2", "answer": "2", "video": "ok.mp4" if bad == "noav" else bad}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    if bad == "noav":
        rows[0]["video"] = ["x.png"]  # the first record has no video: the error names the one that has
        Image.new("RGB", (28, 28)).save(tmp_path / "x.png")
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DomainError) as err:
        load_domain(JsonlDomain(path=str(path), video_field="video"), 0)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}:2: field 'video': ") and needle in msg, msg


def test_video_frames_is_validated():
    def experts(**fields):
        return [{"name": "t", "domain": "builtin:arith"},
                {"name": "v", "domain": {"type": "jsonl", "path": "x.jsonl", "video_field": "v", **fields}}]
    for bad in (0, 257, "many"):
        with pytest.raises(SpecError, match=r"^experts\.1\.domain\.video_frames: "):
            parse_spec({"name": "r", "base_model": "m", "experts": experts(video_frames=bad)})
    assert parse_spec({"name": "r", "base_model": "m", "experts": experts()}).experts[1].domain.video_frames == 8


@pytest.mark.parametrize("bad, needle", [({"image": "img/missing.png"}, "image file not found: img/missing.png"),
                                         ({"image": "bad.png"}, "not a readable image"),
                                         ({}, "missing field 'image'")])
def test_malformed_visual_records_fail_with_one_line(tmp_path, bad, needle):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (28, 28)).save(tmp_path / "img" / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    good = {"prompt": "p1", "answer": "1", "image": "img/ok.png"}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "p2", "answer": "2", **bad}) + "\n")
    with pytest.raises(DomainError) as err:
        load_domain(JsonlDomain(path=str(path), image_field="image"), 0)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}:2: ") and needle in msg


def test_visual_spec_fields_are_validated():
    experts = [{"name": "t", "domain": "builtin:arith"}, {"name": "i", "domain": "builtin:shapes"}]
    with pytest.raises(SpecError, match=r"^experts\.1\.domain: its prompts have images"):
        parse_spec({"name": "r", "base_model": "builtin:tiny", "experts": experts})
    assert parse_spec({"name": "r", "base_model": "builtin:tiny-vl", "experts": experts}).base_model == "builtin:tiny-vl"
    both = {"type": "jsonl", "path": "x.jsonl", "image_field": "a", "video_field": "b"}
    with pytest.raises(SpecError, match=r"experts\.1\.domain\.video_field: give image_field or video_field"):
        parse_spec({"name": "r", "base_model": "m", "experts": [experts[0], {"name": "i", "domain": both}]})


def test_prompt_groups_come_from_the_rows_prompts_not_their_token_ids():
    from trainer.vlm import prompt_group
    assert prompt_group(torch.tensor([0, 0, 0, 1, 1, 1])) == 3
    assert prompt_group(torch.tensor([0, 0, 1, 1, 1, 2])) == 1
    assert prompt_group(torch.tensor([4, 1, 2])) == 1 and prompt_group(torch.tensor([7])) == 1


def test_teacher_scores_the_students_tokens_with_the_same_images(domains, tiny_vl):
    student, processor = tiny_vl
    teacher = HFEngine(build_tiny_vl(SMALL, processor, seed=1), processor)
    prompts = list(domains["builtin:shapes"].train[:3])
    cb = cross_batch(HFEngine(student, processor), "image", teacher, prompts, GrpoSpec(max_new_tokens=4),
                     OpdSpec(samples_per_prompt=2), beta=1.0, weight=1.0)
    mask = cb.rollout.tokens.completion_mask
    with_images = token_stats(teacher.model, cb.rollout.tokens)[0] * mask
    assert torch.allclose(cb.teacher_logp, with_images, atol=1e-5)
    blank = [replace(s, images=(png(Image.new("RGB", (56, 56), (245, 245, 245))),)) for s in prompts]
    ids, pmask, visual = encode_visual(processor, [s.model_input for s in blank])
    t = cb.rollout.tokens
    other = VisualTokenBatch(t.prompt_ids, t.prompt_mask, t.completion_ids, mask, visual=visual, row_prompt=t.row_prompt)
    assert not torch.allclose(token_stats(teacher.model, other)[0] * mask, with_images, atol=1e-4)
    assert float((cb.advantages * mask).abs().sum()) > 0  # two different models: a non-zero OPD signal


def _vl_spec(**over):
    data = {
        "name": "vl-smoke", "base_model": "builtin:tiny-vl", "strategy": "copd",
        "experts": [{"name": "text", "domain": "builtin:arith"}, {"name": "image", "domain": "builtin:shapes"},
                    {"name": "video", "domain": "builtin:motion"}],
        "schedule": {"cycles": 1, "rl_steps": 1, "opd_steps": 1},
        "grpo": {"group_size": 4, "prompts_per_step": 4, "lr": 1e-3, "max_new_tokens": 3},
        "opd": {"prompts_per_step": 2, "samples_per_prompt": 2},
        "eval": {"prompts": 4, "overlap_k": 4, "overlap_prompts": 2},
        "tiny": {**SMALL.model_dump(), "warmstart_max_steps": 50, "warmstart_batch": 16}, "seed": 0, **over}
    return parse_spec(data)


def test_one_cycle_text_image_video_with_opd_across_modalities_and_merged_reload(tmp_path):
    spec = _vl_spec()
    out = tmp_path / "run"
    train_local(spec, out, tmp_path / "models", log_fn=lambda m: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    moved = []
    for e in ("text", "image", "video"):
        kls = {r["key"]: r["value"] for r in rows if r["expert"] == e and r["key"].startswith("opd/kl/")}
        assert set(kls) == {f"opd/kl/{t}" for t in ("text", "image", "video") if t != e}  # every modality teaches
        assert all(math.isfinite(v) for v in kls.values())
        moved += [abs(v) > 1e-3 for v in kls.values()]  # an expert whose groups all scored 0 did not move: KL 0
        for cycle in (0, 1):
            assert {"acc/text", "acc/image", "acc/video"} <= {r["key"] for r in rows if r["expert"] == e and r["cycle"] == cycle}
        assert any(r["key"].startswith("overlap/") for r in rows if r["expert"] == e)
    assert any(moved)
    # the merge covers the vision tower and the projector: the uniform mean of the experts' weights
    experts = [load_file(out / f"checkpoints/{e}/c1-opd/model.safetensors") for e in ("text", "image", "video")]
    final = load_file(out / "final/model.safetensors")
    vision = [k for k in final if "visual" in k]
    assert any("merger" in k for k in vision) and any("blocks" in k for k in vision)
    for k in vision:
        assert torch.allclose(final[k], sum(x[k] for x in experts) / 3, atol=1e-6)
    assert any(not torch.equal(experts[0][k], experts[1][k]) for k in vision)
    _answers_an_image_prompt(out / "final", load_domain("builtin:shapes", 0).eval[0])
    # the dashboard's samples: the images as PNG thumbnails of at most 96 px, a video's frames in order
    doms = {"text": load_domain("builtin:arith", 0), "image": load_domain("builtin:shapes", 0),
            "video": load_domain("builtin:motion", 0)}
    images = check_samples(out, doms, experts=("text", "image", "video"), cycles=1)
    for (d, i), thumbs in images.items():
        assert len(thumbs) == len(doms[d].eval[i].images) and (d == "text") == (not thumbs)
        for t, src in zip(thumbs, doms[d].eval[i].images):
            im, full = Image.open(io.BytesIO(base64.b64decode(t))), Image.open(io.BytesIO(src))
            assert im.format == "PNG" and max(im.size) <= 96
            assert im.size == full.size if max(full.size) <= 96 else max(im.size) == 96  # 84x28 frames kept as is


def _answers_an_image_prompt(folder: Path, sample) -> None:
    """final/ through transformers' own classes answers an image prompt (greedy generate)."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(folder)
    if importlib.util.find_spec("torchvision") is not None:  # AutoProcessor needs it for Qwen2-VL's video slot
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained(folder)
        enc = processor(text=[processor.apply_chat_template(sample.model_input, add_generation_prompt=True)],
                        images=[p["image"] for p in sample.model_input[0]["content"] if p["type"] == "image"],
                        return_tensors="pt")
    else:
        processor = VisionProcessor(AutoTokenizer.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder))
        ids, mask, visual = encode_visual(processor, [sample.model_input])
        enc = {"input_ids": ids, "attention_mask": mask, **visual.kwargs(),
               "mm_token_type_ids": (ids == model.config.image_token_id).int()}
    gen = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] > enc["input_ids"].shape[1]
    assert (enc["input_ids"] == model.config.image_token_id).sum() > 0


def test_merged_vl_checkpoint_reloads_through_copd(tmp_path, tiny_vl, domains):
    model, processor = tiny_vl
    other = build_tiny_vl(SMALL, processor, seed=1)
    model2 = build_tiny_vl(SMALL, processor, seed=0)
    model2.load_state_dict(merge_state_dicts([model.state_dict(), other.state_dict()]))
    save_checkpoint(tmp_path / "m", model2, processor)
    loaded, proc = load_pretrained(str(tmp_path / "m"))
    assert isinstance(proc, VisionProcessor)
    roll = HFEngine(loaded, proc).sample([domains["builtin:shapes"].eval[0].model_input], 1, temperature=1.0,
                                        max_new_tokens=3, greedy=True)
    ref = HFEngine(model2, processor).sample([domains["builtin:shapes"].eval[0].model_input], 1, temperature=1.0,
                                             max_new_tokens=3, greedy=True)
    assert roll.texts == ref.texts and torch.allclose(roll.logp, ref.logp, atol=1e-6)


def test_dataset_rows_with_image_bytes(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    from contract.spec import DatasetDomain

    rows = [{"prompt": "red?", "answer": str(i), "image": {"bytes": png(Image.new("RGB", (28, 28), (60 * i, 0, 0))),
                                                           "path": None}} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    d = load_domain(DatasetDomain(path=str(tmp_path / "t.parquet"), image_field="image", eval={"fraction": 0.25}), 0)
    assert len(d.train) == 3 and len(d.eval) == 1 and all(isinstance(s.images[0], bytes) for s in d.train)
    bad = [{**rows[0], "image": {"bytes": b"junk", "path": None}}, rows[1]]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with pytest.raises(DomainError, match=r"bad\.parquet: row 1: field 'image': not a readable image"):
        load_domain(DatasetDomain(path=str(tmp_path / "bad.parquet"), image_field="image"), 0)


def test_the_shipped_tiny_vl_base_fits_the_example(domains):
    from contract.spec import load_spec
    from trainer.tiny_vl import shipped_vl_base, vl_code_hash

    spec = load_spec(Path(__file__).resolve().parents[2] / "examples" / "copd-tiny-vl.yaml")
    folder = shipped_vl_base(spec.tiny, [load_domain(e.domain, spec.seed) for e in spec.experts])
    assert folder is not None
    model, processor = load_pretrained(str(folder))
    assert isinstance(processor, VisionProcessor) and model.config.model_type == "qwen2_vl"
    meta = json.loads((folder / "warmstart.json").read_text())
    assert all(spec.tiny.target_low <= a <= spec.tiny.target_high for a in meta["sampled_accuracy"].values())
    # built by today's code: a changed generator, habit or warm start needs `python scripts/build-tiny-vl-base.py`
    assert meta["code"] == vl_code_hash(list(meta["sampled_accuracy"]))


def test_the_vl_code_hash_covers_the_visual_generators_and_the_warm_start(monkeypatch):
    from trainer import models, tiny_vl
    from trainer.tiny_vl import vl_code_hash

    keys = ["builtin:arith", "builtin:shapes", "builtin:motion"]
    key = vl_code_hash(keys)
    assert vl_code_hash(keys[:1]) != key  # the domains' modules (shapes and motion: trainer/domains/visual.py)
    with monkeypatch.context() as m:
        m.setattr(models, "HABIT_SHARE", 0.5)  # builtin:tiny's warm start and its constants
        assert vl_code_hash(keys) != key
    with monkeypatch.context() as m:
        m.setattr(tiny_vl, "VISION", {**tiny_vl.VISION, "depth": 3})  # the tower
        assert vl_code_hash(keys) != key
    assert vl_code_hash(keys) == key
    domains = [load_domain(k, 0) for k in keys]
    assert tiny_vl.shipped_vl_base(TinyModelSpec(), domains) is not None
    with monkeypatch.context() as m:  # code that moved on: the shipped base is not used (a run builds its own)
        m.setattr(tiny_vl, "vl_code_hash", lambda keys: "0" * 16)
        assert tiny_vl.shipped_vl_base(TinyModelSpec(), domains) is None


def test_a_cached_tiny_vl_base_is_built_once_while_the_other_runs_wait(tmp_path, monkeypatch):
    """Two runs needing the same unshipped tiny-VL base: the first builds it under the file lock, the second
    waits and loads it (without the lock both would see no base and build it twice)."""
    import threading
    import time

    from trainer import tiny_vl

    domains = [load_domain("builtin:arith", 0)]
    built, inside = [], []
    key = tiny_vl._fingerprint(TinyModelSpec(), domains, 0)  # (hashes load_builtin_tiny_vl's source: before the fake)

    def fake_builder(recipe, doms, seed, cache_dir, log_fn):
        folder = Path(cache_dir) / f"tiny-vl-{key}"
        inside.append(1)
        assert len(inside) == 1, "two builders at once"
        if not (folder / "config.json").exists():
            time.sleep(0.3)  # the warm start
            folder.mkdir(parents=True)
            (folder / "config.json").write_text("{}")
            built.append(folder)
        inside.pop()
        return None, None, folder

    monkeypatch.setattr(tiny_vl, "shipped_vl_base", lambda recipe, doms: None)
    monkeypatch.setattr(tiny_vl, "_fingerprint", lambda recipe, doms, seed: key)
    monkeypatch.setattr(tiny_vl, "load_builtin_tiny_vl", fake_builder)
    got = []
    threads = [threading.Thread(target=lambda: got.append(tiny_vl.builtin_tiny_vl(
        TinyModelSpec(), domains, 0, tmp_path, lambda m: None)[2])) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and got == [built[0], built[0]]
