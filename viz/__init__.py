"""Pure figure builders: step records / traces -> plotly figures or small HTML. No torch, no streamlit."""
