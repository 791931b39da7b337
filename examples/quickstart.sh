#!/usr/bin/env bash
# Quickstart: install mtt (in ./.venv unless MTT_VENV names another), train soap_bpnn on the
# shipped ethanol DFT data, export it to examples/ethanol/model.pt, and run 0.5 ps of ASE MD
# with the exported model alone.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MTT_VENV:-$root/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -c "$root/constraints.txt" -e "$root[ase]"
cd "$root/examples/ethanol"
"$venv/bin/mtt" train options.yaml --force
"$venv/bin/mtt" eval model.pt eval.yaml -o predictions.xyz --force
"$venv/bin/python" md.py model.pt
