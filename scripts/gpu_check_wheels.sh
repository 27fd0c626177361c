#!/usr/bin/env bash
# Fetch the wheels scripts/gpu_check.sh installs on a lent GPU machine into .whl/ (git-ignored).
#
# The GPU machine has torch, torchvision, lightning, transformers, peft, timm, tensorboard, numpy,
# Pillow, PyYAML, tokenizers, huggingface_hub and safetensors, and no network. dlgpr imports
# beyond those, for the parts gpu_check.py runs: open_clip (dlgpr.models.clip_backbone) and its
# ftfy (-> wcwidth) and regex; webdataset (dlgpr.data.streaming, via the retriever modules) and
# its braceexpand; jsonargparse (with docstring_parser, typeshed_client) and dill for the CLI
# (`python -m dlgpr fit`, scripts/pretrain_synthcities.py). Versions are the ones of the
# development venv, the one the tests pass with.
#
#   bash scripts/gpu_check_wheels.sh          # then: du -sh .whl  (must stay well under the 64 MiB tree limit)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PY=${PYTHON:-python3}
# pure-python wheels
$PY -m pip download -q --no-deps --only-binary=:all: -d .whl \
    open_clip_torch==3.3.0 ftfy==6.3.1 webdataset==1.0.2 braceexpand==0.1.7 \
    jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 dill==0.4.1
# compiled (wcwidth 0.9 ships abi3 binaries): the GPU machine's CPython 3.12 on x86_64 Linux
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl regex==2026.11.19 wcwidth==0.9.4
ls -l .whl
du -sh .whl
