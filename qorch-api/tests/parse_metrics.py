"""Parses a metrics exposition from stdin with the Prometheus project's Python client, as a
scraper would, and prints its families as JSON: {name: {"type": .., "samples": [[name, labels,
value], ..]}}. argv[1] says which parser: `prometheus` (the text format 0.0.4) or `openmetrics`.
Any parse error is an exception and a non-zero exit."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as prometheus

text = sys.stdin.read()
parse = {"prometheus": prometheus, "openmetrics": openmetrics}[sys.argv[1]]
families = {}
for family in parse(text):
    families[family.name] = {
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
json.dump(families, sys.stdout)
