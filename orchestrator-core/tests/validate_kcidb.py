"""Validates a KCIDB file with kcidb-io (the KernelCI schema's own package) and prints what it saw.

Usage: validate_kcidb.py FILE. Prints JSON: the schema version kcidb-io calls latest, the
file's version, and every test's id, path and status. Exits non-zero when the file is invalid.
"""

import json
import sys

from kcidb_io import schema

with open(sys.argv[1], encoding="utf-8") as f:
    data = json.load(f)
latest = schema.LATEST
# The newest version, exactly: not an older one the file might also satisfy.
latest.validate_exactly(data)
assert latest.is_compatible_exactly(data), "not the latest schema version"
json.dump(
    {
        "latest": [latest.major, latest.minor],
        "version": [data["version"]["major"], data["version"].get("minor")],
        "checkouts": [c["id"] for c in data.get("checkouts", [])],
        "builds": [b["id"] for b in data.get("builds", [])],
        "tests": [
            {"id": t["id"], "path": t.get("path"), "status": t.get("status"),
             "build_id": t["build_id"]}
            for t in data.get("tests", [])
        ],
    },
    sys.stdout,
)
