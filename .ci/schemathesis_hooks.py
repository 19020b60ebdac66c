"""Hooks for .ci/schemathesis (loaded through SCHEMATHESIS_HOOKS).

Two values the fuzzer cannot make up, made the way a real client makes them:
- `Idempotency-Key`: a client sends a fresh key per new request. Random keys repeat within a run (Hypothesis
  likes short strings), and a repeated key with another body is rightly refused (422), so a valid generated
  key is replaced by a fresh UUID. Invalid keys (negative tests) are sent as generated.
- `cursor`: opaque, only valid as the service issued it; a made-up one is rightly refused (422). Positive
  tests therefore start at the first page; negative tests still send what was generated.
"""
import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"^[!-~]{1,255}$")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key" and VALID_KEY.match(str(headers[name])):
            headers[name] = str(uuid.uuid4())
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if positive and case.query and "cursor" in case.query:
        del case.query["cursor"]
