"""Verify a ledgerflow export bundle with the Python standard library only.

    python verify_export.py RUN.jsonl [HEAD_HASH] [--key HEX]

Checks that seq runs 1..n without gaps, that each payload matches its
SHA-256, that each event links to the previous hash, that each hash
recomputes, and that the last hash equals the header's head hash (and
HEAD_HASH, when a copy kept elsewhere is given). Exits 0 when the bundle
verifies, 1 otherwise.
"""

import base64
import hashlib
import hmac
import json
import sys


def verify(path, expected_head=None, key=None):
    with open(path, encoding="utf-8") as handle:
        header, *events = [json.loads(line) for line in handle if line.strip()]
    prev = bytes(32)
    for n, event in enumerate(events, start=1):
        payload = base64.b64decode(event["payload"])
        digest = hashlib.sha256(payload).hexdigest()
        envelope = json.dumps({"event_id": event["event_id"], "payload_sha256": digest,
                               "recorded_at": event["recorded_at"], "schema_version": event["schema_version"],
                               "seq": n, "stream_id": header["run_id"], "type": event["type"]},
                              sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
        step = hmac.new(key, prev + envelope, hashlib.sha256).digest() if key else hashlib.sha256(prev + envelope).digest()
        if event["seq"] != n or bytes.fromhex(event["prev_hash"]) != prev or step.hex() != event["hash"]:
            return f"event {n} does not verify"
        prev = step
    if len(events) != header["head_seq"] or prev.hex() != header["head_hash"]:
        return "the last event is not the header's head"
    if expected_head and prev.hex() != expected_head:
        return "the head differs from the one kept elsewhere"
    return None


if __name__ == "__main__":
    arguments = sys.argv[1:]
    key = None
    if "--key" in arguments:
        index = arguments.index("--key")
        key = bytes.fromhex(arguments[index + 1])
        del arguments[index:index + 2]
    problem = verify(arguments[0], arguments[1] if len(arguments) > 1 else None, key)
    print(problem or "ok")
    sys.exit(1 if problem else 0)
