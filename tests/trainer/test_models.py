"""Base models other than builtin:tiny: a local Hugging Face folder, and chat templates."""

import shutil

from tests.trainer.conftest import tiny_spec
from trainer.local import train_local
from trainer.models import load_pretrained
from trainer.rollout import encode_prompts
from trainer.units import RunContext


def test_local_hf_folder_as_base_model(tmp_path, model_cache):
    base = RunContext.create(tiny_spec(), tmp_path / "probe", model_cache, log_fn=lambda m: None).layout.base
    folder = tmp_path / "my-model"
    shutil.copytree(base, folder)
    spec = tiny_spec(base_model=str(folder), schedule={"cycles": 1, "rl_steps": 1, "opd_steps": 1})
    state = train_local(spec, tmp_path / "run", model_cache, log_fn=lambda m: None)
    assert state.completed[-1] == "final/merge" and (tmp_path / "run" / "final" / "config.json").exists()


def test_chat_template_is_applied_when_the_tokenizer_has_one(tmp_path, model_cache):
    base = RunContext.create(tiny_spec(), tmp_path / "probe", model_cache, log_fn=lambda m: None).layout.base
    _, tok = load_pretrained(str(base))
    plain_ids, _ = encode_prompts(tok, [".#o"])
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}|?{% endif %}"
    ids, mask = encode_prompts(tok, [".#o", "x"])
    assert tok.decode(ids[0][mask[0].bool()]) == ".#o|?"
    assert ids.shape[1] == plain_ids.shape[1] + 1  # the template's '|?' replace the BOS token
