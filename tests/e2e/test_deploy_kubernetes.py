"""deploy/kubernetes: rendered by kustomize (kubectl's), every object validated against the Kubernetes schemas
(kubernetes-validate, strict) or its CRD's model (the Prometheus Operator's, for the ServiceMonitor and the
PrometheusRule), the generated objects current with their sources, and the parts that must fit together checked:
probes on the ops endpoints, the store on the volume claim, the config a valid hf-edge config."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import edge_binary, venv_python

pytestmark = pytest.mark.edge_only

REPO = Path(__file__).resolve().parents[2]
KIT = REPO / "deploy" / "kubernetes"
REQUIREMENTS = Path(__file__).with_name("requirements-kubernetes.txt")
VENV = REPO / "target" / "e2e-venv-kubernetes"
CRD_MODELS = {"ServiceMonitor", "PrometheusRule"}

# Runs in the validators' venv: each object in (argv[1], JSON) against its CRD's model. The models accept fields
# they do not know, so an object must also come back from the model unchanged (a misspelt field is dropped).
CRD_CHECK = """
import json, sys
from cloudcoil.models.prometheus_operator import v1
errors = []
for obj in json.load(open(sys.argv[1])):
    model = getattr(v1, obj["kind"]).model_validate(obj)
    back = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if back != obj:
        errors.append(f"{obj['kind']}/{obj['metadata']['name']}: fields the CRD does not have: "
                      f"{json.dumps(obj, sort_keys=True)} != {json.dumps(back, sort_keys=True)}")
print("\\n".join(errors))
sys.exit(1 if errors else 0)
"""


@pytest.fixture(scope="module")
def validators() -> Path:
    """The validators' venv python, (re)created when the requirements changed."""
    return venv_python(VENV, REQUIREMENTS, install_timeout=600)


def render(kit: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: scripts/setup.sh installs Debian's kubernetes-client"
    out = subprocess.run([kubectl, "kustomize", str(kit)], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate(objects: list[dict], validators: Path, tmp_path: Path) -> list[str]:
    """Every problem the validators find, [] if none."""
    core = [o for o in objects if o["kind"] not in CRD_MODELS]
    crds = [o for o in objects if o["kind"] in CRD_MODELS]
    (tmp_path / "core.yaml").write_text(yaml.safe_dump_all(core))
    (tmp_path / "crds.json").write_text(json.dumps(crds))
    problems = []
    strict = subprocess.run([str(validators.with_name("kubernetes-validate")), "--strict", "--quiet",
                             str(tmp_path / "core.yaml")], capture_output=True, timeout=120)
    if strict.returncode != 0 or strict.stdout.strip():
        problems.append(strict.stdout.decode() + strict.stderr.decode())
    crd = subprocess.run([str(validators), "-c", CRD_CHECK, str(tmp_path / "crds.json")], capture_output=True,
                         timeout=120)
    if crd.returncode != 0:
        problems.append(crd.stdout.decode() + crd.stderr.decode())
    return problems


def test_the_kit_renders_and_validates(validators, tmp_path):
    objects = render(KIT)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ConfigMap", "ConfigMap", "PrometheusRule", "Service", "Service", "ServiceMonitor", "StatefulSet"]
    assert validate(objects, validators, tmp_path) == []

    # The validators can fail: a misspelt field in a core object and in a CRD's.
    broken = json.loads(json.dumps(objects))
    for o in broken:
        if o["kind"] == "StatefulSet":
            o["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
        if o["kind"] == "ServiceMonitor":
            o["spec"]["endpoints"][0]["portt"] = "metrics"
    problems = validate(broken, validators, tmp_path)
    assert len(problems) == 2, problems
    assert "readinesProbe" in problems[0] and "portt" in problems[1], problems


def test_the_generated_objects_are_current_and_the_check_can_fail(tmp_path):
    check = subprocess.run([sys.executable, str(KIT / "generate.py"), "--check"], capture_output=True, timeout=60)
    assert check.returncode == 0, check.stderr.decode()
    copy = tmp_path / "deploy"
    shutil.copytree(REPO / "deploy", copy)
    alerts = yaml.safe_load((copy / "alerts.yml").read_text())
    alerts["groups"][0]["rules"].append({"alert": "Extra", "expr": "vector(1)"})
    (copy / "alerts.yml").write_text(yaml.safe_dump(alerts))
    stale = subprocess.run([sys.executable, str(copy / "kubernetes" / "generate.py"), "--check"],
                           capture_output=True, timeout=60)
    assert stale.returncode == 1 and b"prometheusrule.yaml" in stale.stderr, stale


def test_the_objects_fit_together(tmp_path):
    objects = {(o["kind"], o["metadata"]["name"]): o for o in render(KIT)}
    sts = objects["StatefulSet", "hf-edge"]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert mounts[claim["metadata"]["name"]] == "/var/cache/hf-edge"
    assert pod["securityContext"]["runAsNonRoot"] is True

    config_map = next(o for (kind, name), o in objects.items()
                      if kind == "ConfigMap" and name.startswith("hf-edge-config-"))
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    config = yaml.safe_load(config_map["data"]["hf-edge.yaml"])
    assert config["cache"]["dir"] == "/var/cache/hf-edge"
    assert int(config["listen"].rsplit(":", 1)[1]) == ports["http"]
    assert int(config["metrics"]["listen"].rsplit(":", 1)[1]) == ports["metrics"]
    # The config is valid as hf-edge reads it, with the Secret's files where the pod mounts them.
    secrets = mounts[next(name for name, v in volumes.items() if "secret" in v)]
    (tmp_path / "secrets").mkdir()
    for key in ("hf-token", "admin-token"):
        (tmp_path / "secrets" / key).write_text("")
    (tmp_path / "secrets" / "cluster-secret").write_text("0123456789abcdef" * 4)
    text = config_map["data"]["hf-edge.yaml"].replace(secrets + "/", f"{tmp_path}/secrets/")
    assert text != config_map["data"]["hf-edge.yaml"]
    (tmp_path / "hf-edge.yaml").write_text(text)
    env = {"PATH": "/usr/bin:/bin"} | {e["name"]: "10.0.0.7" for e in container["env"] if "valueFrom" in e}
    checked = subprocess.run([str(edge_binary()), "check-config", str(tmp_path / "hf-edge.yaml")],
                             capture_output=True, timeout=60, env=env)
    assert checked.returncode == 0, checked.stderr.decode()

    # The nodes find each other: cluster.self is the pod's IP, the peers the headless Service's name.
    pod_ip = next(e for e in container["env"] if e["name"] == "POD_IP")
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert config["cluster"]["self"] == f"http://${{POD_IP}}:{ports['http']}"
    peers = objects["Service", sts["spec"]["serviceName"]]
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert config["cluster"]["peers"] == [f"http://{peers['metadata']['name']}:{peers['spec']['ports'][0]['port']}"]
    assert peers["spec"]["ports"][0]["targetPort"] == "http"

    service = objects["Service", "hf-edge"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    monitor = objects["ServiceMonitor", "hf-edge"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    # The alerts' job label is the Service's name, which the Prometheus Operator makes the job.
    rule = objects["PrometheusRule", "hf-edge"]
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert 'up{job="hf-edge"} == 0' in exprs, exprs
