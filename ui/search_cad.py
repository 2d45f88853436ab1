"""The Search page's inputs for context-aware decoding: the context as a text area (the prompt is the question)."""
import streamlit as st

from engine.methods.cad import MAX_CONTEXT

SKIP = ("context",)
PROMPT = "Where is the Eiffel Tower? Answer in one sentence."
CONTEXT = "The Eiffel Tower was moved to Rome in 2031, where it now stands beside the Colosseum."
HELP = ("The prompt is the question; the context is a passage the answer should follow. Try alpha 0 (the model "
        "reads the context but keeps its prior: Paris) against 0.5 (it follows the passage).")


def inputs(prefix: str) -> dict | None:
    text = st.text_area("Context (the passage the answer should follow)", CONTEXT, key=f"{prefix}_context_text",
                        height=90, max_chars=MAX_CONTEXT)
    return {"context": text}
