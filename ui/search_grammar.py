"""The Search page's inputs for grammar-constrained decoding (pages/9_Search.py imports it for "grammar"): the
grammar in a text area (not the one-line option box), with examples (a JSON schema of a person, a regex for a
date, an EBNF grammar for arithmetic) that also set grammar_kind and a prompt that fits."""
from __future__ import annotations

import json

import streamlit as st

from engine.methods import grammar as G
from viz.safe import md_text

SKIP = ("grammar",)        # drawn here as a text area, not by option_widgets as a text input
HELP = ("The grammar decides which tokens may come next: every other logit is set to -inf before sampling; "
        "end-of-text is allowed only where the grammar accepts. grammar_kind (sidebar) says what the text is.")

PERSON = json.dumps(G.example_schema(), indent=2)
DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
ARITHMETIC = """root ::= expr
expr ::= term (" "? ("+" | "-") " "? term)*
term ::= factor (" "? ("*" | "/") " "? factor)*
factor ::= [0-9]+ | "(" " "? expr " "? ")"
"""
DEFAULTS = {"json_schema": PERSON, "regex": DATE, "ebnf": ARITHMETIC}
# label -> (grammar_kind, grammar, prompt)
EXAMPLES = {
    "JSON schema: a person": ("json_schema", PERSON, "Describe a person called Ada Lovelace as JSON."),
    "regex: a date": ("regex", DATE, "On which date did Apollo 11 land on the Moon? Give the date."),
    "EBNF: arithmetic": ("ebnf", ARITHMETIC, "Write an arithmetic expression whose value is 24, using parentheses."),
}
PROMPT = EXAMPLES["JSON schema: a person"][2]      # the page's first prompt (pages/9_Search.py)
NO_TEXT = {"json": "any JSON object: no grammar text needed", "any": "no constraint: every token is allowed "
           "(the output equals autoregressive decoding)"}


def _use(prefix: str, label_key: str) -> None:
    """The example button's callback (runs before the page is drawn, so it may set the widgets' values)."""
    kind, text, prompt = EXAMPLES[st.session_state[label_key]]
    st.session_state[f"{prefix}_grammar_kind"] = kind
    st.session_state[f"{prefix}_grammar_text"] = text
    st.session_state[f"{prefix}_grammar_text__kind"] = kind
    st.session_state[f"{prefix}_prompt"] = prompt


def inputs(prefix: str) -> dict | None:
    """The grammar text for the run ({"grammar": text}); {} for the kinds without one; None (with a warning) while
    the text area is empty."""
    kind = st.session_state.get(f"{prefix}_grammar_kind", G.KINDS[0])
    key = f"{prefix}_grammar_text"
    c1, c2 = st.columns([3, 1])
    label_key = f"{prefix}_grammar_example"
    c1.selectbox("example", list(EXAMPLES), key=label_key,
                 help="a grammar with a prompt that fits it; Use example sets grammar_kind, the grammar and the prompt")
    c2.button("Use example", key=f"{prefix}_grammar_use", on_click=_use, args=(prefix, label_key))
    if kind in NO_TEXT:
        st.caption(md_text(f"grammar_kind = {kind}: {NO_TEXT[kind]}"))
        return {}
    # a switch of grammar_kind replaces an unedited example of the other kind with this kind's example
    made_for = st.session_state.get(f"{key}__kind")
    if key in st.session_state and made_for != kind and st.session_state[key] in DEFAULTS.values():
        st.session_state[key] = DEFAULTS[kind]
    st.session_state[f"{key}__kind"] = kind
    what = {"json_schema": "JSON schema", "regex": "regular expression (the whole answer must match)",
            "ebnf": "EBNF grammar (GBNF: root ::= ...; or Lark: start: ...)"}[kind]
    kw = {} if key in st.session_state else {"value": DEFAULTS[kind]}
    text = st.text_area(f"grammar: {what}", key=key, height=170, max_chars=G.MAX_GRAMMAR,
                        help="compiled before the first forward: an error names the position", **kw)
    if not text.strip():
        st.warning("Write a grammar (or pick an example) to generate.")
        return None
    return {"grammar": text}
