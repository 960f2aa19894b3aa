"""Reads a JUnit XML file with junitparser (an independent parser) and prints what it saw as JSON."""
import json
import sys

from junitparser import Error, Failure, JUnitXml, Skipped

xml = JUnitXml.fromfile(sys.argv[1])
out = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "cases": []}
for suite in xml:
    out["tests"] += suite.tests
    out["failures"] += suite.failures
    out["errors"] += suite.errors
    out["skipped"] += suite.skipped
    for case in suite:
        result = "passed"
        message = None
        for r in case.result:
            if isinstance(r, Failure):
                result = "failure"
            elif isinstance(r, Error):
                result = "error"
            elif isinstance(r, Skipped):
                result = "skipped"
            else:
                continue
            message = r.message
        out["cases"].append({
            "name": case.name,
            "classname": case.classname,
            "time": case.time,
            "result": result,
            "message": message,
            "system_out": case.system_out,
        })
print(json.dumps(out))
