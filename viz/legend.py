"""The app's one colour legend. Every view takes its colours from here."""
from viz.safe import html_text

# speculative decoding
ACCEPTED = "#2CA02C"     # accepted draft token (green)
REJECTED = "#D62728"     # rejected draft token (red)
BONUS = "#1F77B4"        # bonus / target-corrected token (blue)
RESAMPLED = "#FF7F0E"    # resampled token (orange)
UNVERIFIED = "#9E9E9E"   # unverified / pending (grey)
SPEC_STATUS = {"accepted": ACCEPTED, "rejected": REJECTED, "bonus": BONUS, "corrected": BONUS,
               "resampled": RESAMPLED, "unverified": UNVERIFIED, "root": "#555555"}

# KV cache
KV_KEPT = "#2CA02C"
KV_EVICTED = "#D62728"
KV_SINK = "#F2C80F"      # attention sink (yellow)
KV_NEWEST = "#1F77B4"    # newest entry (blue)
KV_ABSENT = "rgba(128,128,128,0.15)"  # position not yet generated (faint grey on a light and a dark page)
KV_STATUS = {"kept": KV_KEPT, "evicted": KV_EVICTED, "sink": KV_SINK, "newest": KV_NEWEST}

# diffusion (the reference demos' convention)
MASK = "#444444"
COMMITTED_EARLIER = "#6699CC"
COMMITTED_NOW = "#66CC66"
CONF_LOW = "#FF6666"     # newly committed, confidence < 0.3
CONF_MID = "#FFAA33"     # newly committed, confidence < 0.7
PROMPT = "#DDDDDD"

# Jacobi / lookahead
JACOBI_FIXED = "#2CA02C"      # converged (equals the fixed point)
JACOBI_CHANGED = "#D62728"    # changed in this iteration
JACOBI_COMMITTED = "#1F77B4"  # committed to the output this iteration
JACOBI_GUESS = "#9E9E9E"      # unchanged but not yet known to be fixed
JACOBI_STATUS = {"fixed": JACOBI_FIXED, "changed": JACOBI_CHANGED, "committed": JACOBI_COMMITTED,
                 "unchanged": JACOBI_GUESS}

# context-aware decoding / cautious next-token prediction (search)
WITH_CONTEXT = "#1F77B4"      # the model given the context (blue)
WITHOUT_CONTEXT = "#9E9E9E"   # the model without it (grey)
CAD = "#2CA02C"               # the contrast the decoder uses (green); the chosen trial of a cautious step too


def confidence_colour(c: float) -> str:
    """LLaDA's grading of newly committed tokens by confidence."""
    if c < 0.3:
        return CONF_LOW
    if c < 0.7:
        return CONF_MID
    return COMMITTED_NOW


def prob_colour(p: float) -> str:
    """Token stream shading by probability: red (unlikely) -> green (certain)."""
    p = max(0.0, min(1.0, float(p)))
    r = int(214 + (44 - 214) * p)
    g = int(39 + (160 - 39) * p)
    b = int(40 + (44 - 40) * p)
    return f"#{r:02X}{g:02X}{b:02X}"


# a swatch's border: mid grey with a halo in the page's own text colour at low opacity, so a dark swatch
# ([MASK] #444444) stands out on a dark page and a pale one on a white page
SWATCH_BORDER = "#999999"
SWATCH_HALO = "rgba(128,128,128,0.5)"


def legend_html(items: dict[str, str]) -> str:
    """A small inline legend: {label: colour}."""
    spans = "".join(
        f'<span style="display:inline-block;margin-right:12px"><span style="display:inline-block;width:12px;'
        f'height:12px;background:{c};border:1px solid {SWATCH_BORDER};box-shadow:0 0 0 1px {SWATCH_HALO};'
        f'vertical-align:middle;margin-right:4px"></span>{html_text(l)}</span>'
        for l, c in items.items())
    return f'<div style="font-size:0.85em">{spans}</div>'
