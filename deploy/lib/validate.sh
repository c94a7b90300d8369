# Validates the deployment files: docker-compose.yml against the compose specification's
# schema, every Kubernetes manifest against Kubernetes' schemas (kubernetes-validate,
# strict), the kustomization's resource list, the Grafana dashboard and the Prometheus
# config. The validators come from PyPI into a virtualenv under target/.

validators_venv() {
  venv=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/validate-venv
  if [ ! -x "$venv/bin/check-jsonschema" ] || [ ! -x "$venv/bin/kubernetes-validate" ]; then
    say "installing check-jsonschema and kubernetes-validate from PyPI"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      # Debian ships venv separately.
      can_apt || die "python3 -m venv does not work here: install python3-venv"
      apt_install python3-venv
      python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check check-jsonschema kubernetes-validate
  fi
}

# What `kubectl kustomize deploy/k8s` rendered, every object against Kubernetes' schemas.
validate_rendered_manifests() { # file
  local venv
  validators_venv
  "$venv/bin/kubernetes-validate" --strict --quiet "$1"
}

validate_deploy_files() {
  local venv
  validators_venv
  (
    set -e
    cd "$REPO_ROOT"
    say "validating docker-compose.yml against the compose specification"
    "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
    say "validating deploy/k8s against the Kubernetes schemas"
    local manifest
    for manifest in deploy/k8s/*.yaml; do
      [ "$(basename "$manifest")" = kustomization.yaml ] && continue
      "$venv/bin/kubernetes-validate" --strict --quiet "$manifest"
    done
    "$venv/bin/python" - <<'PY'
import json, os, sys, yaml
kustomization = yaml.safe_load(open("deploy/k8s/kustomization.yaml"))
missing = [r for r in kustomization["resources"] if not os.path.exists(os.path.join("deploy/k8s", r))]
listed = set(kustomization["resources"]) | {"kustomization.yaml"}
unlisted = [f for f in os.listdir("deploy/k8s") if f.endswith(".yaml") and f not in listed]
if missing or unlisted:
    sys.exit(f"kustomization.yaml: missing {missing}, not listed {unlisted}")
dashboard = json.load(open("deploy/grafana/dashboards/pipeline.json"))
assert dashboard["panels"], "the dashboard has no panels"
prometheus = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
assert prometheus["scrape_configs"], "no scrape configs"
print("kustomization, Grafana dashboard and Prometheus config are consistent")
PY
    say "checking the Prometheus config and unit-testing the alerting rules (promtool)"
    ensure_promtool
    promtool check config --syntax-only deploy/prometheus/prometheus.yml >/dev/null
    promtool test rules deploy/prometheus/alerts.test.yml
    say "checking the dashboard and the alerts name only metrics and labels the code records"
    "$venv/bin/python" deploy/lib/check_metric_names.py
  )
}
