# Sourced by the tests that need Python packages from PyPI (cli_ray.sh, cli_k8s.sh): pyenv_ready
# makes the virtual environment $BUILD/pyenv once (python3 -m venv, then pip install of
# PYENV_PKGS: Ray with Serve, the OpenAI client, kubernetes-validate, and setuptools + wheel
# to build ./python without the network), reuses it while its .ready marker is there, and
# returns 0 with PY set to its python; else non-zero with the reason in PYENV_WHY (the
# caller prints SKIP lines: no network, no venv module). pyenv_install_skein_ray installs
# ./python into it (offline), non-zero with the reason in PYENV_WHY.
PYENV=${BUILD:-build}/pyenv
PYENV_PKGS='ray[serve] openai kubernetes-validate setuptools wheel'
pyenv_ready() {
    PY=$PYENV/bin/python
    [ -f "$PYENV/.ready" ] && return 0
    rm -rf "$PYENV"
    mkdir -p "$(dirname "$PYENV")"
    if ! python3 -m venv "$PYENV" >"$PYENV.log" 2>&1; then
        PYENV_WHY="python3 -m venv failed: $(tail -1 "$PYENV.log")"; rm -rf "$PYENV"; return 1
    fi
    # shellcheck disable=SC2086
    if ! timeout 900 "$PY" -m pip install -q $PYENV_PKGS >>"$PYENV.log" 2>&1; then
        PYENV_WHY="pip install $PYENV_PKGS failed (no network?): $(tail -1 "$PYENV.log")"; rm -rf "$PYENV"; return 1
    fi
    touch "$PYENV/.ready"
}
pyenv_install_skein_ray() {
    "$PY" -m pip install -q --no-deps --no-build-isolation ./python >"$PYENV.log" 2>&1 ||
        { PYENV_WHY="pip install ./python: $(tail -3 "$PYENV.log")"; return 1; }
}
