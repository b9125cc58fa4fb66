"""Run one snippet of client code in a fresh interpreter and print its outcome as JSON.

huggingface_hub reads HF_ENDPOINT and the cache paths when it is imported, so every test runs its client code
in a new process with its own environment. Reads {"code": ..., "args": {...}} on stdin; the snippet sees
`args` and sets `result` (anything JSON-serialisable). The last line printed is `E2E-RESULT {json}`, holding
either {"result": ...} or {"error": class name, "classes": [its MRO names], "message": ..., "traceback": ...}.
"""

import json
import sys
import traceback

request = json.load(sys.stdin)
namespace = {"args": request["args"], "__name__": "__e2e_client__"}
try:
    exec(compile(request["code"], "<e2e client snippet>", "exec"), namespace)
    outcome = {"result": namespace.get("result")}
except Exception as error:  # the test decides whether an error was expected
    outcome = {
        "error": type(error).__name__,
        "classes": [cls.__name__ for cls in type(error).__mro__],
        "message": str(error),
        "traceback": traceback.format_exc(),
    }
print("E2E-RESULT " + json.dumps(outcome), flush=True)
