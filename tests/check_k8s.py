"""deploy/k8s against the Kubernetes schemas and against skein itself: run by tests/cli_k8s.sh
as `check_k8s.py SKEIN` with kubernetes-validate and PyYAML installed. Prints one PASS or FAIL
line per case:

  k8s_schema_<file>     every object of deploy/k8s/<file>.yaml validates, strictly (no unknown
                        field), against the schemas of Kubernetes 1.29 and the newest one
                        kubernetes-validate has;
  k8s_serve_wiring      the Deployment's probes ask /health and the Prometheus annotations
                        /metrics on the container's port, the weights volume is read-only
                        (mount and claim), a GPU is requested, the Service selects the pods,
                        every skein flag in its arguments is one `skein serve --help` lists;
  k8s_hpa_metric        the HorizontalPodAutoscaler scales that Deployment on a metric skein
                        exports (a name in src/serve/metrics.c);
  k8s_train_wiring      the Indexed Job's pods get RANK from their completion index and
                        WORLD_SIZE = completions = parallelism, LOCAL_RANK, MASTER_ADDR = pod 0's
                        name under the headless Service their subdomain names, MASTER_PORT =
                        that Service's port; every skein flag is one `skein train --help` lists,
                        --resume among them.
"""
import functools
import glob
import os
import re
import subprocess
import sys
from typing import Any, Dict, List, Optional

import kubernetes_validate
import yaml

from pycheck import case

SK = sys.argv[1]
DOCS = {os.path.basename(f)[:-5]: [d for d in yaml.safe_load_all(open(f)) if d]
        for f in sorted(glob.glob("deploy/k8s/*.yaml"))}


def obj(file: str, kind: str) -> Dict[str, Any]:
    """The one object of `kind` in deploy/k8s/<file>.yaml."""
    found = [d for d in DOCS[file] if d["kind"] == kind]
    assert len(found) == 1, f"{file}.yaml: {len(found)} {kind} objects"
    return found[0]


def unknown_flags(command: str, words: List[str]) -> List[str]:
    """The --flags among words that `skein COMMAND --help` does not list."""
    usage = subprocess.run([SK, command, "--help"], capture_output=True, text=True).stdout
    known = set(re.findall(r"--[a-z][a-z-]*", usage))
    return [w for w in words if w.startswith("--") and w not in known]


def schema(file: str) -> Optional[str]:
    errors = []
    for version in ("1.29.0", kubernetes_validate.latest_version()):
        for d in DOCS[file]:
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{d['kind']}/{d['metadata']['name']} at {version}: {e.message} at {list(e.path)}")
    return "; ".join(errors) or None


def serve_wiring() -> Optional[str]:
    dep, svc = obj("serve", "Deployment"), obj("serve", "Service")
    pod = dep["spec"]["template"]
    c = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    args = c["args"]
    port = int(args[args.index("--port") + 1])
    assert args[0] == "serve" and ports.get("http") == port, (args, ports)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/health" and get["port"] in ("http", port), (probe, get)
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics" and \
        int(ann["prometheus.io/port"]) == port, ann
    model = args[args.index("--model") + 1]
    mounts = [m for m in c["volumeMounts"] if model.startswith(m["mountPath"] + "/")]
    assert len(mounts) == 1 and mounts[0]["readOnly"], f"--model {model}: no read-only mount holds it"
    vol = next(v for v in pod["spec"]["volumes"] if v["name"] == mounts[0]["name"])
    assert vol["persistentVolumeClaim"]["readOnly"], vol
    assert c["resources"]["limits"]["nvidia.com/gpu"] >= 1 and "--device" in args, c["resources"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), svc["spec"]["selector"]
    assert svc["spec"]["ports"][0]["targetPort"] in ("http", port), svc["spec"]["ports"]
    bad = unknown_flags("serve", args)
    return f"flags skein serve does not know: {bad}" if bad else None


def hpa_metric() -> Optional[str]:
    hpa, dep = obj("serve-hpa", "HorizontalPodAutoscaler"), obj("serve", "Deployment")
    ref = hpa["spec"]["scaleTargetRef"]
    assert ref["kind"] == "Deployment" and ref["name"] == dep["metadata"]["name"], ref
    exported = set(re.findall(r'"(skein_[a-z_]+)"', open("src/serve/metrics.c").read()))
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    bad = [n for n in names if n not in exported]
    return f"metrics skein does not export: {bad} (it has {sorted(exported)})" if bad or not names else None


def train_wiring() -> Optional[str]:
    job, svc = obj("train", "Job"), obj("train", "Service")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    value = {k: e.get("value") for k, e in env.items()}
    name, sub = job["metadata"]["name"], pod["subdomain"]
    assert spec["completionMode"] == "Indexed", spec["completionMode"]
    assert int(value["WORLD_SIZE"]) == spec["completions"] == spec["parallelism"], \
        (value["WORLD_SIZE"], spec["completions"], spec["parallelism"])
    assert env["RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']", env["RANK"]
    assert value["LOCAL_RANK"] == "0" and value["MASTER_ADDR"] == f"{name}-0.{sub}", value
    assert svc["metadata"]["name"] == sub and svc["spec"]["clusterIP"] == "None", svc
    assert svc["spec"]["selector"] == {"job-name": name}, svc["spec"]["selector"]
    assert int(value["MASTER_PORT"]) == svc["spec"]["ports"][0]["port"], (value, svc["spec"]["ports"])
    script = " ".join(c["command"] + c.get("args", []))
    words = script[script.index("skein train"):].split()
    assert "--resume" in words, "no --resume: a restarted rank would start over"
    bad = unknown_flags("train", words)
    return f"flags skein train does not know: {bad}" if bad else None


for f in DOCS:
    case(f"k8s_schema_{f.replace('-', '_')}", functools.partial(schema, f))
case("k8s_serve_wiring", serve_wiring)
case("k8s_hpa_metric", hpa_metric)
case("k8s_train_wiring", train_wiring)
