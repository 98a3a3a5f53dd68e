# Two entry points: `make demo` (set up + the main job on embedded data) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/quickstart

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

# torch 2.14.1 + torchvision 0.29.1: the pair that imports together on x86_64 (wheels on this disk).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[all]"
	touch $@

demo: setup
	$(VENV)/bin/dna-deploy quickstart --out $(OUT)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

clean:
	rm -rf $(VENV) runs
