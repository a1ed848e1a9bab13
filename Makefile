# The two entry points of the README: `make demo` and `make test`. Each sets up what it needs.
# The demo ships what pays off here: --precision auto times fp32 and int8 on this machine and keeps int8 only
# when it is faster in every repeat and within 1 pt of float top-1.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
DEMO_OUT ?= build/demo

.PHONY: demo test lint system-deps clean bench-quant bench-students bench-backends coverage coverage-fidelity agreement-budget coverage-torchvision arm-board

# Debian packages: python3-venv for the venv itself.
system-deps:
	@python3 -c "import ensurepip, venv" 2>/dev/null || { \
	  echo "installing python3-venv with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }

$(PY): | system-deps
	python3 -m venv $(VENV)

# torch is pinned here: a range would pull a multi-GB CUDA build where the CPU wheel is not at hand.
$(VENV)/.base: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt setuptools wheel
	$(PIP) install -c constraints.txt -e .
	touch $@

# Every extra, so no backend test skips: TFLite (tensorflow-cpu, ai-edge-litert), OpenVINO, asyncssh, detection (faster-coco-eval, pyyaml).
# The device tests talk to Debian's OpenSSH server on loopback.
$(VENV)/.test: $(VENV)/.base
	@test -x /usr/sbin/sshd || { \
	  echo "installing openssh-server with apt-get (for the device tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server; }
	$(PIP) install -c constraints.txt -e '.[test,tflite,openvino,devices,detect]'
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/edgekd compile examples/cifar10/model.toml --target onnx-cpu -o $(DEMO_OUT) --force \
	  --precision auto --calib calibration/cifar10 --eval examples/cifar10/val --max-drop 1.0 --verify-samples 64
	$(VENV)/bin/edgekd bench $(DEMO_OUT) --device local
	@echo; cat $(DEMO_OUT)/report.md

test: $(VENV)/.test arm-board lint
	EDGEKD_ARM_BOARD=$(abspath $(BOARD_DIR)) $(PY) -m pytest -q

# An emulated Raspberry Pi 4 for tests/test_arm_board.py (tools/arm-board.sh: aarch64 Debian bookworm, Python 3.11,
# LiteRT under qemu-user, its own sshd on 127.0.0.1). Built once with the network (~1.5 min cold: debootstrap + PyPI,
# 360 MB), then cached in BOARD_DIR and rebuilt from scratch only when the script changes. Needs root (chroot, and a
# system-wide qemu-aarch64 binfmt_misc handler that stays registered); where it cannot be built, `make test` goes
# on and the board tests skip, saying why.
BOARD_DIR ?= .cache/arm-board
BOARD_STAMP := $(BOARD_DIR)/board/.built-$(shell sha256sum tools/arm-board.sh | cut -c1-16)

arm-board: $(BOARD_STAMP)

$(BOARD_STAMP):
	@if [ "$$(id -u)" != 0 ]; then echo "arm board: not root, not built (the board tests skip)"; exit 0; fi; \
	if ls $(BOARD_DIR)/board/.built-* >/dev/null 2>&1 && [ -e $(BOARD_DIR)/board/.rootfs-ok ]; then \
	  echo "arm board: tools/arm-board.sh changed; rebuilding $(BOARD_DIR)"; \
	  tools/arm-board.sh stop $(BOARD_DIR); rm -rf --one-file-system $(BOARD_DIR); fi; \
	if tools/arm-board.sh build $(BOARD_DIR); then touch $@; \
	else echo "arm board: BUILD FAILED (see above); the board tests skip until it builds" >&2; fi

# ruff, pinned in constraints.txt: lint, then the format check; both report before the target fails.
LINT_PATHS := edgekd tests bench examples
$(VENV)/.lint: constraints.txt | $(PY)
	$(PIP) install -c constraints.txt ruff
	touch $@

lint: $(VENV)/.lint
	$(VENV)/bin/ruff check $(LINT_PATHS); c=$$?; $(VENV)/bin/ruff format --check $(LINT_PATHS); f=$$?; \
	  test $$c -eq 0 && test $$f -eq 0

clean:
	rm -rf build .pytest_cache

# int8 calibration benchmark: edgekd's observers vs ONNX Runtime and NNCF on the CIFAR-10 teacher, same
# float graph and images (bench/README.md). Needs examples/cifar10/teacher.pth; rewrites docs/quantization-benchmark.md.
DATA ?= ../shared/data/cifar10/train
$(VENV)/.bench: $(VENV)/.base
	$(PIP) install -c constraints.txt -e '.[bench]'
	touch $@

bench-quant: $(VENV)/.bench
	$(PY) bench/quant_benchmark.py --data $(DATA) --model examples/cifar10/model.toml \
	  --json build/quant-benchmark.json --markdown docs/quantization-benchmark.md

# Objectives and a second shape at 20 epochs (labels only, KD, KD + hint/attention, decoupled KD; resnet14:0.375),
# the 200-epoch KD student and its 50 % and 2:4 sparse fine-tunes (bench/README.md). Checkpoints and resumes
# under .cache/students-cifar10 (hours: about 60 s an epoch on one core); rewrites docs/student-benchmark.md.
bench-students: $(VENV)/.base
	$(PY) bench/student_benchmark.py --data $(DATA) --epochs 200 --live-teacher --amp bf16 \
	  --variants labels@20,kd@20,kd-features@20,dkd@20,kd,sparse-50,sparse-2:4 --shapes resnet14:0.375@20 \
	  --workdir .cache/students-cifar10 \
	  --json build/student-benchmark.json --markdown docs/student-benchmark.md

# onnx2tf pins its own TensorFlow, so it gets its own venv beside ours.
ONNX2TF_VENV ?= .venv-onnx2tf
$(ONNX2TF_VENV)/bin/onnx2tf: | system-deps
	python3 -m venv $(ONNX2TF_VENV)
	$(ONNX2TF_VENV)/bin/pip --disable-pip-version-check -q install onnx2tf==1.29.24 onnx_graphsurgeon sng4onnx \
	  onnxsim tf_keras psutil ai-edge-litert

# edgekd vs onnx2tf and NNCF; needs the KD student of bench-students. Rewrites docs/backend-benchmark.md.
# BENCH_BACKENDS_ARGS adds options, e.g. "--repeats 7" or "--cifar-student resnet20 --cifar-weights
# examples/cifar10/teacher.pth" (the teacher when no KD student was trained).
BENCH_BACKENDS_ARGS ?=
bench-backends: $(VENV)/.bench $(VENV)/.test $(ONNX2TF_VENV)/bin/onnx2tf
	$(PY) bench/backend_benchmark.py --data $(DATA) --onnx2tf $(ONNX2TF_VENV)/bin/onnx2tf \
	  --json build/backend-benchmark.json --markdown docs/backend-benchmark.md $(BENCH_BACKENDS_ARGS)

# Third-party models × targets × precisions (bench/model_coverage.py): the onnx wheel's light Caffe2 models and
# stock architectures at opsets 11/13/17, static and dynamic. Resumes from bench/results/model-coverage.json.
coverage: $(VENV)/.test
	$(PY) bench/model_coverage.py --json bench/results/model-coverage.json --markdown docs/model-coverage.md

# The stock classifiers trained longer (15 epochs on 2000 CIFAR-10 images per class, ~2 h of one core
# the first time, cached under .cache/model-coverage), beside NNCF; rewrites docs/classifier-fidelity.md.
coverage-fidelity: $(VENV)/.test $(VENV)/.bench
	$(PY) bench/model_coverage.py --models fidelity --skip sensitivity,speed-check \
	  --json bench/results/classifier-fidelity.json --markdown docs/classifier-fidelity.md

# Those classifiers with --max-drop 1 on held-out images without labels: the 99 % agreement target bought with
# layers in float, measured on the fidelity images the search never saw (needs ../shared's CIFAR-10).
agreement-budget: $(VENV)/.test
	$(PY) bench/agreement_budget.py --json bench/results/agreement-budget.json --markdown docs/agreement-budget.md

# torchvision's own model definitions, exported by torch 2.14 (its default dynamo exporter and TorchScript at
# opset 17) in a venv of their own: torchvision does not import beside edgekd's torch 2.13.0 CPU wheel.
# The same matrix for them; rewrites docs/torchvision-coverage.md. Resumes from bench/results/torchvision-coverage.json.
TORCHVISION_VENV ?= .cache/torchvision-venv
$(TORCHVISION_VENV)/bin/python: | system-deps
	python3 -m venv $(TORCHVISION_VENV)
	$(TORCHVISION_VENV)/bin/pip --disable-pip-version-check -q install torch==2.14.1 torchvision==0.29.1 onnx onnxscript

coverage-torchvision: $(VENV)/.test $(TORCHVISION_VENV)/bin/python
	$(TORCHVISION_VENV)/bin/python bench/torchvision_export.py --images calibration/cifar10 --out .cache/torchvision-onnx
	$(PY) bench/model_coverage.py --models torchvision --skip sensitivity,speed-check --peer \
	  --json bench/results/torchvision-coverage.json --markdown docs/torchvision-coverage.md
