#!/usr/bin/env bash
# Download the paper's four checkpoints (about 14.5 GB each in bf16, 58 GB in all) into models/.
#   pip install -U "huggingface_hub[cli]"; huggingface-cli login   # Mistral-7B-v0.1 is gated
set -euo pipefail
cd "$(dirname "$0")"
for repo in mistralai/Mistral-7B-v0.1 augmxnt/shisa-gamma-7b-v1 WizardLMTeam/WizardMath-7B-V1.1 GAIR/Abel-7B-002; do
  huggingface-cli download "$repo" --local-dir "models/${repo#*/}" \
    --include "*.json" "*.safetensors" "tokenizer.model"
done
