"""The KV-cache view of one step of a trace (the live page and the replay page share it)."""
import streamlit as st

from ui import controls, renderers
from viz import kv as vz
from viz import legend
from viz.safe import md_text


def kv_metrics(steps, cur) -> dict:
    s = steps[cur]
    out = {"cache entries": f"{s.get('cache_len', '-')} / {s.get('seq_len', '-')}",
           "KV MB kept / full": f"{s.get('kv_bytes', 0) / 1e6:.1f} / {s.get('kv_bytes_full', 0) / 1e6:.1f}"}
    q = s.get("quality")
    if q:
        agreement, first = q.get("agreement"), q.get("first_divergence")
        out["agreement vs full"] = "-" if agreement is None else f"{agreement:.2f}"
        out["first divergence"] = "none" if first is None else f"step {first}"
    return out


def render(r, prefix: str = "kv", compact: bool = False) -> None:
    """`r` is a Runner or a replay view: anything with .trace and .cursor."""
    all_steps = r.trace.steps
    cur = r.cursor if r.cursor is not None else len(all_steps) - 1
    steps = all_steps[: cur + 1]
    step = steps[-1]
    policy = step.get("policy") or r.trace.meta.get("params", {}).get("policy", "")
    st.markdown(f"**policy: {md_text(policy)}** · budget {step.get('budget', '?')} · step {cur} "
                f"({md_text(step.get('phase', ''))})"
                + (f" · evicted {step.get('evicted_count', 0)} entries this step" if step.get("evicted_count") else ""))
    controls.metrics_row(r, kv_metrics(all_steps, cur))
    if not renderers.live(r):
        st.markdown(vz.tokens_html(all_steps, cur), unsafe_allow_html=True)
    renderers.full_text(all_steps, cur, lambda s: 1)
    if step.get("quality"):
        st.caption("Underlined red: the full cache's greedy choice differs at that token (hover for it).")
    layers = vz.watched_layers(all_steps)
    if not layers:
        st.info("No layer was watched in this run (watch_layers); only memory is shown.")
        st.plotly_chart(vz.memory_figure({policy: steps}), key=f"{prefix}_mem", width="stretch")
        return
    st.markdown(legend.legend_html(vz.legend_items()), unsafe_allow_html=True)
    c1, c2, c3 = st.columns(3)
    layer_opts = layers + ["all"]
    layer = c1.selectbox("layer", layer_opts, index=0, key=f"{prefix}_layer",
                         format_func=lambda v: "all layers (summary)" if v == "all" else f"layer {v}")
    nh = vz.n_kv_heads(all_steps, layers[0])
    head_opts = ["all"] + list(range(nh))
    head = c2.selectbox("KV head", head_opts, index=1 if nh else 0, key=f"{prefix}_head",
                        format_func=lambda v: "all heads (summary)" if v == "all" else f"KV head {v}",
                        disabled=layer == "all")
    group = vz.query_group(all_steps, layer if layer != "all" else layers[0])
    qhead = c3.selectbox("query head (attention)", list(range(nh * group)), key=f"{prefix}_qhead",
                         index=(0 if head == "all" else int(head) * group))
    st.plotly_chart(vz.eviction_map_figure(all_steps, layer, head, cursor=cur),
                    key=f"{prefix}_map_{layer}_{head}", width="stretch")
    att_layer = layer if layer != "all" else layers[0]
    if compact:
        st.plotly_chart(vz.attention_heatmap_figure(all_steps, att_layer, qhead, cursor=cur),
                        key=f"{prefix}_att", width="stretch")
        st.plotly_chart(vz.score_bars_figure(step, att_layer, 0 if head == "all" else int(head)),
                        key=f"{prefix}_bars", width="stretch")
    else:
        a, b = st.columns(2)
        a.plotly_chart(vz.attention_heatmap_figure(all_steps, att_layer, qhead, cursor=cur),
                       key=f"{prefix}_att", width="stretch")
        b.plotly_chart(vz.score_bars_figure(step, att_layer, 0 if head == "all" else int(head)),
                       key=f"{prefix}_bars", width="stretch")
    a, b = st.columns(2) if not compact else (st, st)
    a.plotly_chart(vz.memory_figure({policy: steps}), key=f"{prefix}_mem", width="stretch")
    if any(s.get("quality") for s in steps):
        b.plotly_chart(vz.agreement_figure({policy: steps}), key=f"{prefix}_agr", width="stretch")
