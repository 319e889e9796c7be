"""Parses a Prometheus text exposition with the Prometheus client library's own parser
(PyPI prometheus-client), independently of the Rust code that wrote it, and prints the
metric families it found as JSON.

Used by leaktrace/tests/exports.rs: python read_prometheus.py FILE
"""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    families = [
        {
            "name": family.name,
            "type": family.type,
            "help": family.documentation,
            "samples": [
                {"name": s.name, "labels": s.labels, "value": float(s.value)} for s in family.samples
            ],
        }
        for family in text_string_to_metric_families(text)
    ]
    print(json.dumps(families, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
