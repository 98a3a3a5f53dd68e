# Two entry points: `make demo` (set up + the main job on embedded data) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/quickstart

.PHONY: setup demo test test-deps bench clean

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

test: setup test-deps
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

# What some tests need beyond Python: OpenSSH's server and client (tests/targets: a real sshd on
# 127.0.0.1) and the adb client (the phone route's checks). Installed with apt-get when absent (as
# root, or with sudo -n); where that fails, those tests skip and say why.
test-deps:
	@if [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null && command -v adb >/dev/null; then exit 0; fi; \
	SUDO=; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	if $$SUDO apt-get update -qq >/dev/null 2>&1 && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    openssh-server openssh-client adb >/dev/null 2>&1; then echo "installed openssh-server and adb for the tests"; \
	else echo "note: could not install openssh-server/adb with apt-get: the SSH target test and adb checks will skip"; fi

clean:
	rm -rf $(VENV) runs
