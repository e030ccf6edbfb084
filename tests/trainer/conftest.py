import pytest

from trainer.spec import parse_spec


def tiny_spec(**overrides):
    """A 2-expert CoPD spec small enough for a test: tiny model, short warm start, few prompts."""
    data = {
        "name": "test-copd",
        "base_model": "builtin:tiny",
        "strategy": "copd",
        "experts": [{"name": "image", "domain": "builtin:grid"}, {"name": "video", "domain": "builtin:frames"}],
        "topology": "all_pairs",
        "schedule": {"cycles": 1, "rl_steps": 2, "opd_steps": 2},
        "grpo": {"group_size": 4, "prompts_per_step": 4, "lr": 1e-3, "max_new_tokens": 5},
        "opd": {"beta": 1.0, "prompts_per_step": 4, "samples_per_prompt": 2},
        "eval": {"prompts": 16, "overlap_k": 4, "overlap_prompts": 8},
        "tiny": {"hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate_size": 64,
                 "warmstart_max_steps": 60, "warmstart_batch": 16,
                 "target_low": 0.0, "target_high": 1.0},  # any accuracy: a test needs a model, not a skill
        "seed": 0,
    }
    for k, v in overrides.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    return parse_spec(data)


def shipped_tiny() -> dict:
    """The default `tiny:` recipe: builtin:tiny then loads the shipped, warm-started base (no warm start), whose
    experts really learn in a step or two. For tests that need a training signal (groups with right and wrong
    answers), which the test recipe above, a model and not a skill, does not give."""
    from contract.spec import TinyModelSpec

    return TinyModelSpec().model_dump()


@pytest.fixture
def spec():
    return tiny_spec()
