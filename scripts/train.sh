#!/usr/bin/env bash
# The main job: train a policy with HAEPO on CartPole-v1 (CPU, about 3 minutes on 2 cores).
# Sets up .venv on first use. Extra arguments go to the training script (see --help).
set -euo pipefail
HAEPO_EXTRAS="cleanrl" source "$(dirname "$0")/_venv.sh"
exec python examples/cleanrl/haepo_cartpole.py "$@"
