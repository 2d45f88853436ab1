"""Text from a trace (prompts, token texts, names) shown as text, never as markup.

A shared trace is someone else's file: an image link in its prompt would be fetched by whoever
opens it, and HTML in a token text would run in the page. Every trace string goes through one of:
  html_text(s)  before it goes into HTML (st.markdown(..., unsafe_allow_html=True), title="...")
  plot_text(s)  before it goes into plotly text, which reads a few tags (<b>, <br>, <a href>)
  md_text(s)    before it goes into Streamlit markdown (st.markdown, st.caption, st.warning ...)
"""
from __future__ import annotations

import html
import re

# In HTML, the characters of markdown links, images, emphasis and code as numeric entities too: the
# browser shows them as they are, and no markdown pass over the HTML can read a link out of them.
_HTML_MD = str.maketrans({c: f"&#{ord(c)};" for c in "[]()!*_`~$\\"})

# ASCII punctuation that CommonMark, GFM and Streamlit's extensions give a meaning to
# (emphasis, links and images, code, headings, lists, tables, :colour[...] directives, $math$).
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~:$])")


def html_text(s, newline: str = "&#10;") -> str:
    """Escaped for HTML text and attribute values. Line breaks become `newline` (token views pass
    "↵<br>"): a blank line would end the HTML block in markdown and let the rest be read as markdown."""
    s = html.escape(str(s), quote=True).translate(_HTML_MD)
    return s.replace("\r\n", "\n").replace("\r", "\n").replace("\n", newline)


def plot_text(s) -> str:
    """Escaped for plotly's text, hover text and titles (it decodes &lt; &gt; &amp;)."""
    return html.escape(str(s), quote=False)


def md_text(s, max_len: int | None = None) -> str:
    """Shown literally by Streamlit markdown, on one line: markdown specials backslash-escaped,
    <, > and & as HTML entities, newlines as ↵. Cut to `max_len` characters first when given."""
    s = str(s)
    if max_len is not None and len(s) > max_len:
        s = s[: max_len - 1] + "…"
    s = s.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "↵ ").replace("\t", " ")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
