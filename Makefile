# `make run`: create .venv, install, run the main job on the bundled sample.
# `make test`: create .venv, install with test extras, run lint (ruff) and the test suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RECIPE ?= cluster/recipes/local.yaml

.PHONY: install run finetune lint test test-fast bench clean

$(VENV)/.installed: pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "raylm needs Python 3.10+"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# no GPU: take the CPU build of torch first (a bare `torch` would pull a multi-GB CUDA build)
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e ".[test]"
	@# S3 storage and its test server (moto's S3 on loopback), resolved on their own: see pyproject's test extra
	$(PY) -m pip install -q "s3fs>=2024.2" "moto[s3]>=5" "flask>=3" "flask-cors>=4"
	@touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/raylm run $(RECIPE)

# the fine-tuning worked example (README): from the model `make run` pretrained, name the play of a passage
finetune: install
	@ls runs/shakespeare-local/train/checkpoint_*/state.pt >/dev/null 2>&1 || $(MAKE) run
	$(PY) -m raylm.pipelines.tasks play --out data/tasks/play.jsonl
	$(VENV)/bin/raylm data cluster/recipes/finetune.yaml
	$(VENV)/bin/raylm eval cluster/recipes/finetune.yaml --checkpoint runs/shakespeare-local
	$(VENV)/bin/raylm train cluster/recipes/finetune.yaml
	$(VENV)/bin/raylm eval cluster/recipes/finetune.yaml

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two pytest processes at once: the tests on the session's Ray instance or timing a moment of a run, one after
# another; beside them, at a lower priority (nice 5: they take the cycles the first leaves idle, and slow it little),
# the tests without Ray and those on a Ray instance of their own (tests/conftest.py), which print once the first
# are done. Either failing fails `make test`.
test: lint
	@nice -n 5 $(PY) -m pytest -q -p no:cacheprovider --durations=5 -m "not slow or own_ray" > .pytest-beside.log 2>&1 & beside=$$!; \
	$(PY) -m pytest -q --durations=12 -m "slow and not own_ray"; first=$$?; \
	wait $$beside; beside=$$?; echo "== run beside these: pytest -m 'not slow or own_ray'"; cat .pytest-beside.log; \
	exit $$(( first || beside ))

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) benchmarks/data_throughput.py

clean:
	rm -rf runs bench-out .pytest_cache .pytest-beside.log
