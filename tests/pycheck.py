"""What the Python checks run by tests/*.sh share (check_ray.py, check_k8s.py): case(), the
PASS/FAIL line of one case, in the format tests/run.sh counts."""
import traceback
from typing import Callable, Optional


def case(name: str, body: Callable[[], Optional[str]]) -> None:
    """Runs body and prints "PASS name" when it returns None, else "FAIL name: why" with its
    message, the failed assertion (its line and message) or the exception's traceback."""
    try:
        why = body()
    except AssertionError as e:
        why = f"{traceback.extract_tb(e.__traceback__)[-1].line}: {e}"
    except Exception:
        why = traceback.format_exc(limit=4).strip().replace("\n", " | ")
    print(f"PASS {name}" if why is None else f"FAIL {name}: {why}", flush=True)
