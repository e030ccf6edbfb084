"""Merge methods against hand-computed numbers, and the streamed merge of safetensors folders."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from contract.spec import MergeSpec, SpecError, parse_spec
from trainer.algos import elect_sign, magnitude_mask, merge_deltas, merge_state_dicts, merge_tensor
from trainer.checkpoint import verify_checkpoint
from trainer.merge import MergeError, merge_folders, read_tensor, tensor_index

BASE = torch.tensor([1.0, 1.0, 1.0, 1.0])
D1 = torch.tensor([1.0, -2.0, 3.0, 0.5])
D2 = torch.tensor([-1.0, 1.0, 2.0, -4.0])
HALF = [0.5, 0.5]


def test_magnitude_mask_keeps_exactly_the_largest():
    assert magnitude_mask(D1, 0.5).tolist() == [False, True, True, False]
    assert magnitude_mask(D2, 0.25).tolist() == [False, False, False, True]
    assert not magnitude_mask(D2, 0.1).any()  # int(0.4) = 0 entries kept


def test_elect_sign_total_frequency_and_ties():
    d = torch.stack([torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 0.0]), torch.tensor([-5.0, -1.0, 0.0])])
    w = torch.tensor([1 / 3] * 3)
    assert elect_sign(d, w, "total").tolist() == [-1.0, 1.0, 1.0]      # sums -3, 1, 0 (a tie elects +1)
    assert elect_sign(d, w, "frequency").tolist() == [1.0, 1.0, 1.0]   # two experts of three are positive


def test_ties_by_hand():
    # trim to 2 of 4: δ1 → [0, -2, 3, 0], δ2 → [0, 0, 2, -4]; sign of the sum [0, -2, 5, -4] → [+, -, +, -];
    # agreeing entries: [none], [-2], [3, 2], [-4] → means [0, -2, 2.5, -4]
    out = merge_tensor([BASE + D1, BASE + D2], HALF, "ties", BASE, density=0.5)
    assert out.tolist() == [1.0, -1.0, 3.5, -3.0]
    scaled = merge_tensor([BASE + D1, BASE + D2], HALF, "ties", BASE, density=0.5, scale=2.0)
    assert scaled.tolist() == [1.0, -3.0, 6.0, -7.0]


def test_ties_weighted_mean_of_the_agreeing():
    # density 1: nothing trimmed; entry 2: both positive, weights 0.25 / 0.75 → (0.25·3 + 0.75·2) / 1 = 2.25
    out = merge_deltas(torch.stack([D1, D2]), torch.tensor([0.25, 0.75]), "ties", 1.0)
    # entry 0: sum 0.25 − 0.75 < 0 → only δ2 (−1) agrees; entry 1: −0.5 + 0.75 > 0 → δ2 (1); entry 3: δ2 (−4)
    assert out.tolist() == [-1.0, 1.0, 2.25, -4.0]


def test_task_arithmetic_and_average_by_hand():
    ta = merge_tensor([BASE + D1, BASE + D2], HALF, "task_arithmetic", BASE, scale=2.0)
    assert ta.tolist() == [1.0, 0.0, 6.0, -2.5]             # 1 + 2·0.5·(δ1 + δ2)
    avg = merge_tensor([BASE + D1, BASE + D2], HALF, "average")
    assert avg.tolist() == [1.0, 0.5, 3.5, -0.75]
    same = merge_tensor([BASE + D1, BASE + D2], HALF, "task_arithmetic", BASE)  # λ = 1: the average again
    assert same.tolist() == avg.tolist()


def test_dare_drops_and_rescales_with_the_given_generator():
    delta = torch.arange(1.0, 201.0)
    keep = torch.rand(delta.shape, generator=torch.Generator().manual_seed(7)) < 0.3
    out = merge_deltas(delta[None], torch.tensor([1.0]), "dare_linear", 0.3, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(out, torch.where(keep, delta / 0.3, torch.zeros(())))
    assert 0 < int(keep.sum()) < 200
    full = merge_deltas(torch.stack([D1, D2]), torch.tensor(HALF), "dare_ties", 1.0,
                        generator=torch.Generator().manual_seed(0))
    assert full.tolist() == merge_deltas(torch.stack([D1, D2]), torch.tensor(HALF), "ties", 1.0).tolist()


def test_delta_methods_need_the_base_and_ints_come_from_the_first():
    with pytest.raises(ValueError, match="base"):
        merge_tensor([D1, D2], HALF, "ties", None)
    ints = merge_tensor([torch.tensor([3, 4]), torch.tensor([5, 6])], HALF, "ties", torch.tensor([0, 0]))
    assert ints.tolist() == [3, 4]


def test_merge_spec_fields_and_the_old_form():
    spec = parse_spec({"name": "r", "experts": [{"name": "a", "domain": "builtin:arith"},
                                                 {"name": "b", "domain": "builtin:grid"}],
                       "merge": {"weights": {"a": 0.25, "b": 0.75}}})
    assert spec.merge.method == "average" and spec.merge.weights == {"a": 0.25, "b": 0.75}
    with pytest.raises(SpecError, match="merge.density"):
        parse_spec({"name": "r", "experts": [{"name": "a", "domain": "builtin:arith"}], "strategy": "independent",
                    "merge": {"method": "ties", "density": 0}})
    with pytest.raises(SpecError, match="merge.method"):
        parse_spec({"name": "r", "experts": [{"name": "a", "domain": "builtin:arith"}], "strategy": "independent",
                    "merge": {"method": "soup"}})


def _folder(path, tensors):
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({"model_type": "toy"}))
    (path / "optimizer.pt").write_bytes(b"not copied")
    return path


def _toy(seed):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(6, 5, generator=g), "b.bias": torch.randn(7, generator=g).to(torch.bfloat16),
            "c.count": torch.tensor([seed, 2 * seed])}


def test_streamed_merge_equals_the_in_memory_average(tmp_path):
    experts = [_toy(s) for s in (1, 2, 3)]
    folders = [_folder(tmp_path / f"e{i}", sd) for i, sd in enumerate(experts)]
    w = [0.2, 0.3, 0.5]
    sha, size = merge_folders(folders, tmp_path / "out", w, MergeSpec(), state={"step": 4},
                              shard_bytes=64)  # tiny shards: the sharded layout and its index
    out = tmp_path / "out"
    assert verify_checkpoint(out) and size > 0 and len(sha) == 64
    assert (out / "model.safetensors.index.json").is_file() and not (out / "optimizer.pt").exists()
    assert (out / "config.json").is_file()
    got = {n: read_tensor(r) for n, r in tensor_index(out).items()}
    want = merge_state_dicts(experts, w)
    assert set(got) == set(want)
    for n in want:
        assert got[n].dtype == want[n].dtype and torch.equal(got[n], want[n]), n


def test_streamed_ties_matches_the_pure_function(tmp_path):
    base = {"w": BASE.clone()}
    folders = [_folder(tmp_path / "e1", {"w": BASE + D1}), _folder(tmp_path / "e2", {"w": BASE + D2})]
    merge_folders(folders, tmp_path / "out", HALF, MergeSpec(method="ties", density=0.5),
                  base=_folder(tmp_path / "base", base))
    assert load_file(str(tmp_path / "out" / "model.safetensors"))["w"].tolist() == [1.0, -1.0, 3.5, -3.0]


def test_streamed_merge_refuses_what_does_not_fit(tmp_path):
    a = _folder(tmp_path / "a", {"w": torch.zeros(2)})
    b = _folder(tmp_path / "b", {"v": torch.zeros(2)})
    with pytest.raises(MergeError, match="differ"):
        merge_folders([a, b], tmp_path / "out", HALF, MergeSpec())
    with pytest.raises(MergeError, match="base model"):
        merge_folders([a, a], tmp_path / "out", HALF, MergeSpec(method="ties"), base=tmp_path / "nowhere")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["average", "task_arithmetic", "ties", "dare_linear"])
def test_a_tensor_merged_in_slices_equals_it_merged_whole(method):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(37, 11, generator=g)
    experts = [base + torch.randn(37, 11, generator=g) for _ in range(3)]
    w = [0.2, 0.3, 0.5]
    kw = dict(density=0.4, scale=1.5)
    if method == "dare_linear":  # the drop is drawn per slice: deterministic, and every entry 0 or δ/density
        a = merge_tensor(experts, [1.0, 0, 0], method, base, **kw, generator=torch.Generator().manual_seed(1), chunk=50)
        b = merge_tensor(experts, [1.0, 0, 0], method, base, **kw, generator=torch.Generator().manual_seed(1), chunk=50)
        d = (a - base) / 1.5
        assert torch.equal(a, b)
        assert torch.all(torch.isclose(d, torch.zeros(())) | torch.isclose(d, (experts[0] - base) / 0.4, atol=1e-5))
        return
    whole = merge_tensor(experts, w, method, base, **kw, chunk=10**9)
    sliced = merge_tensor(experts, w, method, base, **kw, chunk=50)
    assert torch.allclose(whole, sliced, atol=1e-6)
    if method == "ties":  # the whole-tensor trim: 40 % of 407 entries of each delta kept
        masks = [magnitude_mask(e - base, 0.4) for e in experts]
        assert [int(m.sum()) for m in masks] == [int(0.4 * 407)] * 3
