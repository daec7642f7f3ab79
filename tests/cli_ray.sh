#!/bin/sh
# skein under Ray on the CPU: tests/check_ray.py on a local Ray instance (Ray Serve replicas of
# skein serve answering the OpenAI client, streaming, a killed replica replaced without a lost
# request, autoscaling, a client's disconnect cancelling its request; skein train on Ray ranks
# against plain skein train, a killed rank resumed from its checkpoint). Ray, Ray Serve and
# the OpenAI client come from PyPI into build/pyenv (tests/lib_pyenv.sh, made once); every
# case is SKIPped where they cannot be installed, and under SKEIN_QUICK (make test-asan).
# pip install ./python (skein_ray) is a case of its own. Prints PASS/FAIL/SKIP lines.
SK=${SKEIN:-./skein}
CASES="ray_serve_start_2_replicas ray_serve_completion_equals_generate ray_serve_stream_equals_whole
ray_serve_replica_killed_no_lost_request ray_serve_autoscales_1_to_2 ray_serve_disconnect_cancels ray_cli_serve
ray_train_one_rank_killed_resumes ray_train_refused_flags_not_retried ray_cli_train
ray_train_same_losses_as_workers_2 ray_train_killed_rank_resumes"
[ -x "$SK" ] || { echo "FAIL cli_ray: $SK is not built"; exit 1; }
if [ -n "$SKEIN_QUICK" ]; then  # the sanitizer run: Ray's start-up dominates, make test runs them
    for c in ray_pip_install $CASES; do echo "SKIP $c: SKEIN_QUICK (make test runs the Ray tests)"; done
    exit 0
fi
. tests/lib_pyenv.sh
if ! pyenv_ready; then
    for c in ray_pip_install $CASES; do echo "SKIP $c: $PYENV_WHY"; done
    exit 0
fi
if pyenv_install_skein_ray; then echo "PASS ray_pip_install"; else echo "FAIL ray_pip_install: $PYENV_WHY"; exit 1; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
# Ray's own messages go to a file (its raylet notices are dropped), shown when a case fails.
timeout 600 "$PY" tests/check_ray.py "$SK" "$T" 2>"$T/stderr" | grep -v "(raylet)" | tee "$T/out"
if [ "$(grep -c '^PASS \|^SKIP ' "$T/out")" -ne "$(echo $CASES | wc -w)" ]; then
    tail -40 "$T/stderr"
    grep -q '^FAIL ' "$T/out" || echo "FAIL cli_ray: check_ray.py ended before every case reported"
fi
