"""`copd data check`: load every domain of a spec and show what the model and the verifier will see."""

from __future__ import annotations

from typing import Callable

from contract.spec import RunSpec


class DataCheckError(Exception):
    """A domain that cannot be loaded; one line naming the expert and the problem."""


def prompt_renderer(base_model: str, echo: Callable[[str], None]):
    """(tokenizer or None, note): the base model's tokenizer for its chat template; builtin:tiny has none."""
    if base_model in ("builtin:tiny", "builtin:tiny-vl"):
        return None, f"{base_model}: no chat template, chat messages' contents one per line"
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base_model)
    except Exception as err:  # offline, no such model: still check the data
        first = (str(err).splitlines() or [type(err).__name__])[0][:200]
        return None, f"tokenizer of {base_model} not loaded ({first}); prompts shown without its chat template"
    has = bool(getattr(tok, "chat_template", None))
    return tok, f"{base_model}'s tokenizer" + (" and its chat template" if has else " (no chat template)")


def check_domains(spec: RunSpec, rows: int, echo: Callable[[str], None]) -> bool:
    """Print each expert's domain check; True when every gold answer checked scores 1.0.

    Raises DataCheckError on the first domain that cannot be loaded.
    """
    from trainer.domains import DomainError, load_domain
    from trainer.rollout import render_prompt

    from contract.spec import data_path_errors

    tok, note = prompt_renderer(spec.base_model, echo)
    echo(f"prompts as the model sees them: {note}")
    for field, message in data_path_errors(spec):  # fine for `copd train`; the API and workers would refuse it
        echo(f"note: {field}: {message} (copd train reads it; the API and workers would refuse it)")
    all_ok = True
    for i, expert in enumerate(spec.experts):
        try:
            domain = load_domain(expert.domain, spec.seed)
        except DomainError as err:
            raise DataCheckError(f"experts.{i}.domain ({expert.name}): {err}") from None
        verifier = expert.domain.verifier if not isinstance(expert.domain, str) else "exact"
        kind = getattr(domain.verifier, "kind", None)
        vname = verifier if isinstance(verifier, str) else f"plugin {verifier.function} ({kind} signature)"
        echo(f"\n== {expert.name}: {domain.key}")
        echo(f"rows: train {len(domain.train)}, eval {len(domain.eval)}; verifier {vname}")
        sample = domain.train[0]
        if sample.images:  # the images (a video's frames) go before the text (docs/vlm.md)
            from trainer.domains.images import open_image

            sizes = ", ".join("x".join(map(str, open_image(im).size)) for im in sample.images[:8])
            shown = f"[{len(sample.images)} image(s): {sizes}] " + render_prompt(tok, sample.prompt)
        else:
            shown = render_prompt(tok, sample.model_input)
        echo("prompt (train row 1, as the model sees it):")
        echo("  " + shown.replace("\n", "\n  "))
        echo(f"answer: {sample.answer!r}")
        for split, samples in (("train", domain.train), ("eval", domain.eval)):
            checked = list(samples[:rows])
            scores = [domain.score(s.answer, s) for s in checked]
            mean = sum(scores) / len(scores) if scores else 0.0
            bad = next((s for s, x in zip(checked, scores) if x < 1.0), None)
            line = f"gold answers scored by the verifier ({split}, {len(checked)} rows): {mean:.3f}"
            if bad is not None:
                all_ok = False
                line += f"  <- below 1.0, e.g. answer {bad.answer!r}"
            echo(line)
        errors = getattr(domain.verifier, "errors", 0)
        if errors:
            echo(f"the reward plugin raised on {errors} gold answer(s); first: "
                 + (domain.verifier.first_error or "").strip().splitlines()[-1])
            all_ok = False
    return all_ok
