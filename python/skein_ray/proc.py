"""The skein binary as a child process: finding it, a free port, starting it so that it dies
with its parent, and copying its output line by line.

Everything here runs where the process runs (a Ray actor or Serve replica), not on the driver:
the binary must be at the given path, or on $SKEIN / PATH, on every node.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
from typing import Callable, Mapping, Optional, Sequence

_PR_SET_PDEATHSIG = 1
# Looked up before any fork: the child may only call it, loading a library there could deadlock.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def find_skein(path: Optional[str] = None) -> str:
    """The skein program to run: `path` if given, else $SKEIN, else `skein` on PATH.

    Raises FileNotFoundError naming what was tried when none is an executable file.
    """
    for candidate, origin in ((path, "the argument"), (os.environ.get("SKEIN"), "$SKEIN")):
        if candidate:
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return os.path.abspath(candidate)
            raise FileNotFoundError(f"skein binary {candidate!r} (from {origin}) is not an executable file")
    found = shutil.which("skein")
    if not found:
        raise FileNotFoundError("no skein binary: give its path, set $SKEIN, or put skein on PATH")
    return found


def free_port() -> int:
    """A TCP port free on this node now (bound to port 0, then released).

    Another process may take it before the caller binds it; callers that can, should rather
    let the server bind port 0 itself.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the thread that started it ends, so that a
    Ray worker killed by ray.kill or by the node's OOM killer takes its skein along."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def start(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen:
    """Starts argv with env (added to this process's environment), stdout and stderr merged into
    one text pipe read with pump(), in its own process group (stop() ends the group). The child
    is SIGKILLed when the calling thread dies: call from a thread that lives as long as it."""
    return subprocess.Popen(list(argv), env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                            errors="replace", bufsize=1, start_new_session=True,
                            preexec_fn=_die_with_parent)


def pump(proc: subprocess.Popen, line: Callable[[str], None]) -> int:
    """Calls line(text) for each line the process writes (newline stripped) until it exits;
    returns its exit status (negative: the signal that ended it)."""
    assert proc.stdout is not None
    for text in proc.stdout:
        line(text.rstrip("\n"))
    return proc.wait()


def stop(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Ends the process's group: SIGTERM, then SIGKILL after grace_s seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
