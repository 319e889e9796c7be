"""Validates a JSON document against a JSON Schema with the jsonschema library (PyPI), the
reader a script would use, independently of the Rust code that wrote both.

Strict: every object the schema describes with properties is closed (no property the
schema does not name), so a field added to the output but not to the schema fails too.

Used by leaktrace/tests/schema.rs: python check_schema.py SCHEMA DOCUMENT
Prints {"valid": true} or {"valid": false, "errors": [...]} as JSON.
"""

import json
import sys

from jsonschema import validators


def closed(schema):
    """The schema with additionalProperties false wherever properties are listed."""
    if isinstance(schema, dict):
        out = {k: closed(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


def main(schema_path, doc_path):
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)
    with open(doc_path, encoding="utf-8") as f:
        doc = json.load(f)
    cls = validators.validator_for(schema)
    cls.check_schema(schema)
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in cls(closed(schema)).iter_errors(doc)
    ]
    print(json.dumps({"valid": not errors, "errors": errors[:20]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
