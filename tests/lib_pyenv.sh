# Sourced by the tests that need Python packages from PyPI (cli_ray.sh, cli_k8s.sh).
# pyenv_ready makes the virtual environment build/pyenv (or $SKEIN_PYENV; one for every build
# folder, the sanitizer build's too) with PYENV_PKGS: Ray with Serve, the OpenAI client and
# kubernetes-validate at the versions the tests were written against, setuptools and wheel to
# build ./python without the network. It is made once and reused while its .ready marker
# names the same packages; returns 0 with PY set to its python, else non-zero with the reason
# in PYENV_WHY (the caller prints SKIP lines: no network, no python3-venv).
# pyenv_install_skein_ray installs ./python into it (offline); non-zero with PYENV_WHY.
PYENV=${SKEIN_PYENV:-build/pyenv}
PYENV_PKGS='ray[serve]==2.60.0 openai==3.57.0 kubernetes-validate==1.37.0 setuptools wheel'
pyenv_ready() {
    PY=$PYENV/bin/python
    [ "$(cat "$PYENV/.ready" 2>/dev/null)" = "$PYENV_PKGS" ] && return 0
    rm -rf "$PYENV"
    mkdir -p "$(dirname "$PYENV")"
    if ! python3 -m venv "$PYENV" >"$PYENV.log" 2>&1; then
        PYENV_WHY="python3 -m venv failed: $(tail -1 "$PYENV.log")"; rm -rf "$PYENV"; return 1
    fi
    # shellcheck disable=SC2086
    if ! timeout 900 "$PY" -m pip install -q $PYENV_PKGS >>"$PYENV.log" 2>&1; then
        PYENV_WHY="pip install $PYENV_PKGS failed (no network?): $(tail -1 "$PYENV.log")"; rm -rf "$PYENV"; return 1
    fi
    echo "$PYENV_PKGS" >"$PYENV/.ready"
}
pyenv_install_skein_ray() {
    "$PY" -m pip install -q --no-deps --no-build-isolation ./python >"$PYENV.log" 2>&1 ||
        { PYENV_WHY="pip install ./python: $(tail -3 "$PYENV.log")"; return 1; }
}
