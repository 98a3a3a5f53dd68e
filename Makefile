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
	@echo
	@echo "Report: $(OUT)/report.md (and $(OUT)/report.html); every stage's command: $(OUT)/reproduce.sh"
	@echo "Next (after: source $(VENV)/bin/activate):"
	@echo "  dna-deploy search -r $(OUT)/ratings.json -t $(OUT)/tables/x86-cpu-onnxruntime__tiny.json -b 0.3   # another budget, on this run's ratings and table"
	@echo "  cp examples/quickstart.yaml mine.yaml && dna-deploy run mine.yaml --out runs/mine   # your own pipeline: edit data, space, devices, budgets"

test: setup
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

clean:
	rm -rf $(VENV) runs
