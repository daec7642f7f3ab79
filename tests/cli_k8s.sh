#!/bin/sh
# deploy/k8s checked by tests/check_k8s.py: every manifest against the Kubernetes schemas
# (PyPI kubernetes-validate, strict) and its wiring against skein (probes, metrics, volumes,
# the HPA's metric, the Indexed Job's torchrun-style variables, the skein flags used). Needs
# the virtual environment of tests/lib_pyenv.sh; every case is SKIPped where it cannot be
# made (no network). Prints PASS/FAIL/SKIP lines.
SK=${SKEIN:-./skein}
[ -x "$SK" ] || { echo "FAIL cli_k8s: $SK is not built"; exit 1; }
. tests/lib_pyenv.sh
if ! pyenv_ready; then
    for f in deploy/k8s/*.yaml; do f=$(basename "$f" .yaml); echo "SKIP k8s_schema_$(echo "$f" | tr - _): $PYENV_WHY"; done
    for c in k8s_serve_wiring k8s_hpa_metric k8s_train_wiring; do echo "SKIP $c: $PYENV_WHY"; done
    exit 0
fi
"$PY" tests/check_k8s.py "$SK"
