# The two commands of the README: `make demo` (main job) and `make test`. Both set themselves up on a fresh
# machine with Python 3.11: a virtual environment in .venv, torch pinned by constraints.txt for every install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet -c constraints.txt
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-slow lint bench bench-tokenizers clean

$(VENV)/.core: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(PIP) -e '.[dev]'
	touch $@

demo: $(VENV)/.core
	$(VENV)/bin/omniar demo --out out/demo

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

test: $(VENV)/.dev lint
	$(VENV)/bin/pytest -q -n 2

test-slow: $(VENV)/.dev
	$(VENV)/bin/pytest -q -n 2 -m slow

bench: $(VENV)/.dev
	$(PY) bench/decode.py
	$(PY) bench/gemv.py
	$(PY) bench/train_throughput.py
	$(PY) bench/shapeworld_judge.py
	$(PY) bench/shapeworld_speech.py
	$(PY) bench/omni_generation.py
	$(PY) bench/omni_speech.py

# trains both tokenizers with their defaults (~30 minutes on 2 cores), then the image recipe's ablation
bench-tokenizers: $(VENV)/.dev
	$(VENV)/bin/omniar tokenizer train image --out out/imgtok
	$(PY) bench/image_tokenizer.py --model out/imgtok/checkpoint
	$(PY) bench/speech_codec.py --out out/speech
	$(PY) bench/image_tokenizer.py --ablate

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
