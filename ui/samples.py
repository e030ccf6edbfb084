"""The Samples section of the Run page: each domain's few held-out prompts with their images (a video's frames)
as thumbnails, the reference answer, and every evaluated policy's greedy answer at one cycle's evaluation."""

from __future__ import annotations

import base64
from typing import Any

import streamlit as st

from ui.api import ApiError
from ui.common import CHARTS_S, client, show_error


def answer_order(answers: list[dict[str, Any]], experts: list[str]) -> list[dict[str, Any]]:
    """The run's experts first, in spec order, then the others (`merged`, `mixed`, `student`) by name."""
    rank = {e: i for i, e in enumerate(experts)}
    return sorted(answers, key=lambda a: (rank.get(a["model"], len(rank)), a["model"]))


def mark(answer: dict[str, Any]) -> str:
    """A markdown line: right / wrong (partial credit shown as its score), the model, its answer."""
    if answer["correct"]:
        badge = ":green[**✓ right**]"
    elif answer["score"] > 0:
        badge = f":orange[**{answer['score']:.2f}**]"
    else:
        badge = ":red[**✗ wrong**]"
    text = answer["answer"].strip() or "(empty)"
    return f"{badge} · **{answer['model']}**: `{text[:300]}`"


def prompt_card(sample: dict[str, Any], experts: list[str]) -> None:
    """One prompt: thumbnails left (none for a text prompt), the prompt, the reference and the answers right."""
    with st.container(border=True):
        images = [base64.b64decode(im) for im in sample["images"]]
        if images:
            left, right = st.columns([1, 3])
            with left:
                captions = [f"frame {i + 1}" for i in range(len(images))] if len(images) > 1 else None
                st.image(images, caption=captions, width=96)
        else:
            right = st.container()
        with right:
            st.markdown(f"**#{sample['index']}** `{sample['prompt'][:500]}` → reference `{sample['reference']}`")
            for a in answer_order(sample["answers"], experts):
                st.markdown(mark(a))


@st.fragment(run_every=CHARTS_S)
def samples_view(run_id: int, experts: list[str]) -> None:
    """The latest evaluation's sample prompts per domain (or an earlier cycle's, picked)."""
    api = client()
    key = f"samples_cycle_{run_id}"
    try:
        body = api.samples(run_id, cycle=st.session_state.get(key))
    except ApiError as err:
        show_error(err, "Could not load sample prompts")
        return
    if not body["cycles"]:
        st.info("No sample prompts yet: each domain's first held-out prompts appear with cycle 0's evaluation.")
        return
    cycles = body["cycles"]
    if len(cycles) > 1:
        picked = st.session_state.get(key)
        st.session_state[key] = picked if picked in cycles else None  # None: follow the latest
        st.selectbox("cycle", [None, *cycles], key=key,
                     format_func=lambda c: f"latest (cycle {cycles[-1]})" if c is None else f"cycle {c}")
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for s in body["samples"]:
        by_domain.setdefault(s["domain"], []).append(s)
    if not by_domain:
        st.info(f"No sample prompts at cycle {body['cycle']}.")
        return
    st.caption(f"Cycle {body['cycle']}'s evaluation: every policy's greedy answer to each domain's first held-out "
               "prompts (the same prompts every cycle).")
    for tab, (domain, samples) in zip(st.tabs(list(by_domain)), by_domain.items()):
        with tab:
            for sample in samples:
                prompt_card(sample, experts)
