"""A page for benchmarks/refresh_cost.py: what one live-status refresh costs the browser, by how it is drawn.

?v=0: nothing refreshes · 1: a fragment rerun every second drawing a status line · 3: + 120 coloured token
spans (st.markdown) · 5: no rerun, a component iframe fetching a JSON document every second (ui/live_feed.py's
way). &big=1 adds what our pages carry (40 sidebar inputs, 30 select boxes, two plotly heatmaps); &css=a turns
CSS transitions and animations off. The spans and the feed are synthetic (no model)."""
import json
import os
import random
import threading
import time

import streamlit as st
import streamlit.components.v1 as components

v = st.query_params.get("v", "0")
if "a" in st.query_params.get("css", ""):
    st.html("<style>*, *::before, *::after { transition: none !important; animation: none !important; }</style>")
st.title("refresh cost")
SPANS = "".join(f'<span title="p={random.random():.3f}" style="background:rgba(255,0,0,{random.random():.2f})">'
                f"tok{i} </span>" for i in range(120))
FEED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")   # served at /app/static/


@st.fragment(run_every=1.0 if v in ("1", "3") else None)
def status():
    st.markdown(f"running · step {int(time.time())}")
    if v == "3":
        st.markdown(SPANS + str(time.time()), unsafe_allow_html=True)


status()
if st.query_params.get("big"):
    import numpy as np
    import plotly.graph_objects as go
    with st.sidebar:
        for i in range(40):
            st.number_input(f"option {i}", value=i, key=f"n{i}")
    for j in range(2):
        st.plotly_chart(go.Figure(go.Heatmap(z=np.random.rand(40, 128))), key=f"p{j}")
    for i in range(30):
        st.selectbox(f"choice {i}", ["a", "b"], key=f"s{i}")
if v == "5":
    def writer():
        while True:
            os.makedirs(FEED, exist_ok=True)
            with open(os.path.join(FEED, "live.json.tmp"), "w") as f:
                json.dump({"html": SPANS + str(time.time()), "status": f"running · step {int(time.time())}"}, f)
            os.replace(os.path.join(FEED, "live.json.tmp"), os.path.join(FEED, "live.json"))
            time.sleep(0.5)
    if "writer" not in st.session_state:
        st.session_state.writer = threading.Thread(target=writer, daemon=True)
        st.session_state.writer.start()
    components.html("""<div id="s"></div><div id="t"></div><script>
    async function tick() { try { const r = await fetch("/app/static/live.json", {cache: "no-store"});
      const d = await r.json(); document.getElementById("s").textContent = d.status;
      document.getElementById("t").innerHTML = d.html; } catch (e) {} setTimeout(tick, 1000); }
    tick();</script>""", height=200)
