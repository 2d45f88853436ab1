"""The decoding lab's engine: models, sampling, methods (step generators), traces, runner.

The engine never imports streamlit."""
