"""The Grafana dashboard and the alerting rules against the metrics the code records.

Every metric of ours (ingest_, worker_, notifier_, pipeline_, amqp_) named in a dashboard
expression or an alert must be recorded somewhere in the Rust sources (a `counter!`,
`gauge!` or `histogram!` call), and every label a query groups or filters it by must be one
the code gives it. Metrics of others (RabbitMQ's, Prometheus's `up`) are left alone.
Run from the repository's root; exits non-zero with each mistake listed.
"""

import glob
import json
import re
import sys

import yaml

OURS = ("ingest_", "worker_", "notifier_", "pipeline_", "amqp_")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels every series has once scraped, whatever the code gives it.
SCRAPE_LABELS = {"instance", "job", "le"}

recorded = {}
for path in glob.glob("**/src/**/*.rs", recursive=True):
    if path.startswith("target"):
        continue
    source = open(path, encoding="utf-8").read()
    for call in re.finditer(r'(?:counter|gauge|histogram)!\(\s*"([a-z_:]+)"', source):
        # The call's labels: every `"label" =>` up to the end of the statement.
        statement = source[call.end() : source.find(";", call.end())]
        labels = set(re.findall(r'"([a-z_]+)"\s*=>', statement))
        recorded.setdefault(call.group(1), set()).update(labels)


def expressions():
    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    dashboard = json.load(open("deploy/grafana/dashboards/pipeline.json"))
    for expr in walk(dashboard):
        yield "dashboard", expr
    rules = yaml.safe_load(open("deploy/prometheus/alerts.yml"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield "alert " + rule["alert"], rule["expr"]


mistakes = []
checked = set()
for where, expr in expressions():
    names = re.findall(r"\b([a-z_:][a-z0-9_:]*)\b\s*(?=\{|\[|\)|\s|$|/|>|<|==|\*)", expr)
    ours = [n for n in names if n.startswith(OURS)]
    grouped = set()
    for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        grouped.update(label.strip() for label in clause.split(",") if label.strip())
    for name in ours:
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in recorded:
                base = name[: -len(suffix)]
        if base not in recorded:
            mistakes.append(f"{where}: {name} is recorded nowhere in the code")
            continue
        checked.add(base)
        selectors = re.findall(re.escape(name) + r"\{([^}]*)\}", expr)
        used = set(grouped)
        for selector in selectors:
            used.update(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector))
        unknown = used - recorded[base] - SCRAPE_LABELS
        # A `by` clause may name the label of another metric of the same query.
        unknown = {l for l in unknown if not any(l in recorded.get(other, set()) for other in ours)}
        if unknown:
            mistakes.append(f"{where}: {name} has no label {sorted(unknown)} (it has {sorted(recorded[base])})")

if mistakes:
    print("\n".join(mistakes), file=sys.stderr)
    sys.exit(1)
print(f"{len(checked)} metrics named by the dashboard and the alerts, each recorded by the code with the labels used")
