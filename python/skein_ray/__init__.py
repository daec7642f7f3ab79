"""skein on a Ray cluster: the engines a Ray user already runs place, restart and scale the
skein binary (it must be on every node: an argument, $SKEIN or PATH).

    import ray, skein_ray
    ray.init()                                   # or ray.init(address="auto") on a cluster
    skein_ray.train(["--model", "gpt2", "--data", "/shared/data", "--out", "/shared/run",
                     "--save-every", "100"], workers=4, max_failures=3)
    url = skein_ray.serve("/shared/models/llama", min_replicas=1, max_replicas=4)
    # OpenAI clients: base_url=url + "/v1"

The same from a shell: `python -m skein_ray train --workers 4 -- <skein train flags>` and
`python -m skein_ray serve --model DIR --num-replicas 2` (see `python -m skein_ray --help`).
Training is in skein_ray.training, serving in skein_ray.serving (which needs ray[serve]).
"""
from skein_ray.proc import find_skein
from skein_ray.training import TrainError, TrainResult, train

__all__ = ["find_skein", "train", "TrainError", "TrainResult", "serve", "serve_app"]


def __getattr__(name: str):
    """serve and serve_app, imported on first use: they need ray[serve], training does not."""
    if name in ("serve", "serve_app"):
        from skein_ray import serving
        return getattr(serving, name)
    raise AttributeError(f"module 'skein_ray' has no attribute {name!r}")
