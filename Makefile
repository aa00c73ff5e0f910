# Two commands: `make demo` and `make test`. Each creates .venv/ at the repository root when missing.
#
# torch: nothing in the current package needs it. Once the `train` extra is part of EXTRAS, pip installs
# $(TORCH) in the same command (on CPU machines `torch==2.13.0` comes from local disk). To keep a CUDA
# torch you already have in .venv, pass an empty spec: `make test TORCH=`.

VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= dev
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.thyme-installed

.PHONY: test demo lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]" $(if $(findstring train,$(EXTRAS)),$(TORCH))
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test: lint
	$(VENV)/bin/pytest -q

demo: $(STAMP)
	$(VENV)/bin/thyme demo

bench: $(STAMP)
	$(PY) benchmarks/sandbox_bench.py

clean-venv:
	rm -rf $(VENV)
