# Two commands: `make demo` and `make test` (and `make tiny`, which retrains the bundled thyme-tiny). Each creates .venv/ at the repository root when missing.
#
# torch: the `models` and `train` extras need it; pip installs $(TORCH) in the same command (on CPU machines
# `torch==2.13.0` comes from local disk). To keep a CUDA torch you already have in .venv, pass an empty
# spec: `make test TORCH=`.

VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= dev,models,eval,train,web
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.thyme-installed

.PHONY: test demo tiny lint bench clean-venv test-unprivileged test-verl test-lower

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]" $(if $(or $(findstring train,$(EXTRAS)),$(findstring models,$(EXTRAS))),$(TORCH))
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

test: lint
	$(VENV)/bin/pytest -q

demo: $(STAMP)
	$(VENV)/bin/thyme demo

# thyme-tiny from scratch on this CPU: toy-world data, SFT, GRPO-ATS, evaluation, and the copy bundled in
# src/thyme/models/thyme-tiny/ (resumable; prints the minutes spent in SFT and in RL).
tiny: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(PY) scripts/make_tiny.py

bench: $(STAMP)
	$(PY) benchmarks/sandbox_bench.py

clean-venv:
	rm -rf $(VENV)

# The sandbox behaves differently for an ordinary user (user namespaces, a user and PID namespace per lineage
# instead of a uid pool, no cgroups). As root, this runs the sandbox tests (and the sandbox commands' CLI
# tests) as a throwaway unprivileged user, with a virtualenv of the system Python (the root one may live
# under /root, which other users cannot read).
TEST_USER ?= thyme-ci
test-unprivileged:
	@test "$$(id -u)" = 0 || { echo "run as root: it creates the user $(TEST_USER)"; exit 2; }
	id -u $(TEST_USER) >/dev/null 2>&1 || useradd -m -s /bin/sh $(TEST_USER)
	rm -rf /home/$(TEST_USER)/repo && mkdir -p /home/$(TEST_USER)/repo
	git ls-files -z | xargs -0 -I{} cp --parents {} /home/$(TEST_USER)/repo/
	chown -R $(TEST_USER): /home/$(TEST_USER)/repo
	su $(TEST_USER) -c 'cd ~/repo && /usr/bin/python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev,models]" $(TORCH) && .venv/bin/pytest -q tests/sandbox && .venv/bin/pytest -q tests/test_cli.py -k sandbox'

# The declared lower bounds (pyproject.toml), tested: a third virtualenv, .venv-lower/, with every training,
# model and serving dependency at the lowest version pyproject.toml allows, running the model, agent,
# training, web page and sandbox service tests.
# (transformers 5.5.4 names the KV cache `past_key_values` where 5.25 says `cache`; this is where that shows.)
LOWER_VENV ?= .venv-lower
LOWER_PINS := transformers==5.5.4 accelerate==1.16.0 trl==1.16.0 peft==0.21.0 datasets==5.2.0 \
	fastapi==0.165.0 uvicorn==0.55.0 pydantic==2.14.0 httpx==0.29.0 gradio==6.31.0 playwright==1.65.0
test-lower:
	test -x $(LOWER_VENV)/bin/python || python3 -m venv $(LOWER_VENV)
	$(LOWER_VENV)/bin/pip install -q -e ".[dev,models,train,web]" $(TORCH) $(LOWER_PINS)
	$(LOWER_VENV)/bin/pytest -q -p no:cacheprovider tests/models tests/agent tests/train tests/web \
		tests/sandbox/test_server.py tests/sandbox/test_client_hosts.py

# The verl agent loop needs verl's own environment (verl 0.9 pins an older transformers): a second
# virtualenv, .venv-verl/, where the adapter runs inside real verl against a fake server manager and a real
# `thyme sandbox serve` (tests/verl). .ci/run calls it after `make test`.
VERL_VENV ?= .venv-verl
test-verl:
	test -x $(VERL_VENV)/bin/python || python3 -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/pip install -q -e ".[verl,dev]" $(TORCH)
	OMP_NUM_THREADS=1 $(VERL_VENV)/bin/pytest -q -p no:cacheprovider -W ignore::DeprecationWarning tests/verl
