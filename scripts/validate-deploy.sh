#!/usr/bin/env bash
# Renders every kustomization under deploy/ and validates what it renders:
#   1. strict schema validation (deploy/validate/validate.py): built-in kinds against Kubernetes
#      $K8S_VERSIONS with kubernetes-validate, custom resources (Gateway API, cert-manager,
#      Prometheus Operator) against the CRD schemas vendored in deploy/schemas/;
#   2. checkov's Kubernetes policies (deploy/validate/checkov.yaml, skips justified there).
# Fails on the first kustomization that does not render and on any schema error or policy failure.
# Installs its tools (deploy/validate/requirements.txt, pinned) into a virtualenv once; offline
# afterwards. Usage: scripts/validate-deploy.sh [--keep DIR]   (keeps the rendered manifests)
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest supported release (the preStop sleep action needs 1.30) and the newest the schemas know.
K8S_VERSIONS=(1.30 1.37)

VENV="${STEWARD_DEPLOY_VENV:-$HOME/.cache/steward-deploy-venv}"
REQUIREMENTS=deploy/validate/requirements.txt
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "validate-deploy: installing tools into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  echo "$want" > "$stamp"
fi
PY="$VENV/bin/python"
KUBECTL="$VENV/bin/kubectl"

out=""
if [[ "${1:-}" == "--keep" ]]; then
  out="${2:?--keep needs a directory}"
  mkdir -p "$out"
else
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi

# Every kustomization shipped (a new one is picked up without editing this script).
mapfile -t dirs < <(find deploy -name kustomization.yaml -printf '%h\n' | sort)
rendered=()
for dir in "${dirs[@]}"; do
  file="$out/$(echo "$dir" | tr / _).yaml"
  if ! "$KUBECTL" kustomize "$dir" > "$file"; then
    echo "validate-deploy: $dir does not render" >&2
    exit 1
  fi
  rendered+=("$file")
done
echo "validate-deploy: rendered ${#dirs[@]} kustomizations: ${dirs[*]}"

k8s_args=()
for v in "${K8S_VERSIONS[@]}"; do k8s_args+=(--kubernetes-version "$v"); done
# secret.example.yaml is in no kustomization (documentation), but its shape must stay valid.
"$PY" deploy/validate/validate.py "${k8s_args[@]}" "${rendered[@]}" deploy/base/secret.example.yaml

# The base separately: it alone may skip the namespace and image-tag checks (checkov-base.yaml).
overlays=()
for file in "${rendered[@]}"; do
  [[ "$(basename "$file")" == deploy_base.yaml ]] || overlays+=(-f "$file")
done
run_checkov() { # NAME CONFIG -f FILE...
  local name="$1" config="$2"; shift 2
  if ! "$VENV/bin/checkov" --config-file "$config" "$@" > "$out/checkov.log" 2>&1; then
    cat "$out/checkov.log"
    echo "validate-deploy: checkov failed ($name)" >&2
    exit 1
  fi
  echo "checkov $name: $(grep -m1 -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' "$out/checkov.log")"
}
run_checkov base deploy/validate/checkov-base.yaml -f "$out/deploy_base.yaml"
run_checkov "overlays and opt-in pieces" deploy/validate/checkov.yaml "${overlays[@]}"
echo "validate-deploy: ok"
