#!/usr/bin/env python3
"""Writes tests/hostile/corpus.json: hostile input for every door of the service.

Run it again after editing; the corpus is kept in the repository (a crash found by fuzzing is
added here as a regression case). The integration test `hostile::*` plays every case against
the local stack and holds the service to its promise: no panic, no 5xx; each case answered
with the 4xx it names (and a JSON error body naming the problem), or dead-lettered with a
reason.

Token specs are made at test time (they expire): {"as": subject} is a valid token;
{"claims": {...}, "alg": ..., "secret": "stack"|"other"} signs claims ("$now+N" is a time);
{"raw": "..."} is sent as it is; "scheme" replaces "Bearer".
"""
import base64
import json
import os

cases = []


def api(name, method, path, status, code=None, token={"as": "mallory"}, body=None,
        body_b64=None, headers=None, content_type="application/json"):
    case = {"name": name, "channel": "api", "method": method, "path": path, "token": token,
            "expect_status": status}
    if code:
        case["expect_code"] = code
    if body is not None:
        case["body"] = body
    if body_b64 is not None:
        case["body_base64"] = body_b64
    h = dict(headers or {})
    if content_type and (body is not None or body_b64 is not None):
        h.setdefault("content-type", content_type)
    if h:
        case["headers"] = h
    cases.append(case)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


VALID_CLAIMS = {"sub": "mallory", "iss": "$issuer", "aud": "$audience", "exp": "$now+300"}


def claims(**changes):
    c = dict(VALID_CLAIMS)
    for k, v in changes.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


# --- tokens: every route refuses them with 401 --------------------------------------------
tokens = [
    ("no token", None),
    ("expired", {"claims": claims(exp="$now-60")}),
    ("expired a second ago", {"claims": claims(exp="$now-1")}),
    ("wrong signature", {"claims": claims(), "secret": "other"}),
    ("alg none", {"claims": claims(), "alg": "none"}),
    ("alg HS512 with the right secret", {"claims": claims(), "alg": "HS512"}),
    ("wrong issuer", {"claims": claims(iss="https://evil.example")}),
    ("wrong audience", {"claims": claims(aud="someone-else")}),
    ("no exp", {"claims": claims(exp=None)}),
    ("no sub", {"claims": claims(sub=None)}),
    ("exp as a string", {"claims": claims(exp="tomorrow")}),
    ("garbage", {"raw": "not-a-jwt"}),
    ("two segments", {"raw": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0"}),
    ("four segments", {"raw": "a.b.c.d"}),
    ("empty bearer", {"raw": ""}),
    ("basic auth", {"raw": "bWFsbG9yeTpwYXNzd29yZA==", "scheme": "Basic"}),
    ("base64 junk", {"raw": "e30.e30.e30"}),
    ("huge token", {"raw": "a" * 6000 + "." + "b" * 6000 + "." + "c" * 100}),
    ("truncated signature", {"claims": claims(), "truncate": 10}),
]
for name, token in tokens:
    api(f"token: {name} (list)", "GET", "/v1/requests", 401, None, token=token)
    api(f"token: {name} (submit)", "POST", "/v1/requests", 401, None, token=token,
        body='{"type":"access"}')
    api(f"token: {name} (certificate)", "GET",
        "/v1/requests/01KB0000000000000000000000/certificate", 401, None, token=token)

# A token the gateway accepts whose subject the service cannot use.
for name, sub in [("empty subject", ""), ("subject with a newline", "mal\nlory"),
                  ("subject of 10 000 characters", "m" * 10000),
                  ("subject with a NUL", "mal\u0000lory"),
                  ("subject with control characters", "\u0007\u0008\u001b[31m")]:
    api(f"token: {name}", "GET", "/v1/requests", 401, "unauthorized",
        token={"claims": claims(sub=sub)})

# --- submission bodies ---------------------------------------------------------------------
bodies = [
    ("empty body", "", 400),
    ("unclosed object", "{", 400),
    ("null", "null", 400),
    ("array", "[]", 400),
    ("number", "1", 400),
    ("a bare string", '"access"', 400),
    ("empty object", "{}", 400),
    ("type in capitals", '{"type":"ACCESS"}', 400),
    ("unknown type", '{"type":"delete_everything"}', 400),
    ("type null", '{"type":null}', 400),
    ("type a number", '{"type":1}', 400),
    ("type an array", '{"type":["access"]}', 400),
    ("type an object", '{"type":{"kind":"access"}}', 400),
    ("another subject named in the body", '{"type":"access","subject":"bob"}', 400),
    ("unknown field", '{"type":"access","priority":"urgent"}', 400),
    ("type with a NUL", '{"type":"access\\u0000"}', 400),
    ("type with trailing space", '{"type":"access "}', 400),
    ("trailing garbage", '{"type":"access"} trailing', 400),
    ("two objects", '{"type":"access"}{"type":"erasure"}', 400),
    ("single quotes", "{'type':'access'}", 400),
    ("comments", '{"type":"access" /* hi */}', 400),
    ("NaN", '{"type":NaN}', 400),
    ("huge number", '{"type":1e999999}', 400),
    ("deep nesting", "[" * 1500 + "]" * 1500, 400),
    ("deep nesting in a field", '{"type":' + "[" * 1000 + "]" * 1000 + "}", 400),
    ("deep nesting over the size limit", "[" * 5000 + "]" * 5000, 413),
    ("truncated", '{"type":"acc', 400),
    ("body of 5000 bytes", '{"type":"access","pad":"' + "x" * 5000 + '"}', 413),
    ("body of 1 MB", '{"type":"' + "a" * 1_000_000 + '"}', 413),
    ("unicode escapes for the type", '{"type":"\\u0061ccess","x":1}', 400),
    ("lone surrogate", '{"type":"\\ud800"}', 400),
    ("UTF-8 BOM", "\ufeff{\"type\":\"access\"}", 400),
]
for name, body, status in bodies:
    api(f"submit: {name}", "POST", "/v1/requests", status, body=body)

for name, raw in [("invalid UTF-8", b'{"type":"\xff\xfe"}'), ("latin-1 body", '{"type":"accès"}'.encode("latin-1")),
                  ("NUL bytes", b"\x00\x00\x00\x00"), ("binary", os.urandom(64) if False else bytes(range(256)))]:
    api(f"submit: {name}", "POST", "/v1/requests", 400, body_b64=b64(raw))

for name, ctype, status in [("text/plain", "text/plain", 415), ("form", "application/x-www-form-urlencoded", 415),
                            ("xml", "application/xml", 415), ("multipart", "multipart/form-data; boundary=x", 415)]:
    api(f"submit: content type {name}", "POST", "/v1/requests", status, "unsupported_media_type",
        body='{"type":"access"}', content_type=ctype)

for name, key in [("too long", "k" * 300), ("with spaces only", "   "), ("with a tab", "a\tb"),
                  ("non-ASCII", "clé-ü")]:
    api(f"submit: idempotency key {name}", "POST", "/v1/requests", 400, "invalid_idempotency_key",
        body='{"type":"erasure"}', headers={"idempotency-key": key})

# --- ids -----------------------------------------------------------------------------------
ids = [
    ("short", "x", 400), ("25 characters", "0" * 25, 400), ("27 characters", "0" * 27, 400),
    ("letters outside Crockford base32", "01KBIIIIIIIIIIIIIIIIIIIIII", 400),
    ("lowercase with U", "01kbuuuuuuuuuuuuuuuuuuuuuu", 400),
    ("percent-encoded NUL", "%00", 400), ("path traversal", "..%2F..%2Fetc%2Fpasswd", 400),
    ("very long", "0" * 2000, 400), ("unicode", "%E2%98%83", 400), ("SQL", "1%27%20OR%201%3D1", 400),
    ("overflowing timestamp", "ZZZZZZZZZZZZZZZZZZZZZZZZZZ", 400),
    ("unknown but well-formed", "01KB0000000000000000000000", 404),
    ("another subject's", "$bob_request", 404),
]
for name, rid, status in ids:
    api(f"show: id {name}", "GET", f"/v1/requests/{rid}", status)
    api(f"cancel: id {name}", "DELETE", f"/v1/requests/{rid}", status)
    api(f"report: id {name}", "GET", f"/v1/requests/{rid}/report", status)
    api(f"certificate: id {name}", "GET", f"/v1/requests/{rid}/certificate", status)

# --- list parameters -------------------------------------------------------------------------
for name, query, code in [("limit 0", "limit=0", "invalid_limit"), ("limit -1", "limit=-1", "invalid_limit"),
                          ("limit 101", "limit=101", "invalid_limit"), ("limit abc", "limit=abc", "invalid_limit"),
                          ("limit 1e3", "limit=1e3", "invalid_limit"), ("limit huge", "limit=99999999999999999999999", "invalid_limit"),
                          ("cursor garbage", "cursor=garbage", "invalid_cursor"),
                          ("cursor of another subject", "cursor=$bob_cursor", "invalid_cursor"),
                          ("cursor very long", "cursor=" + "A" * 3000, "invalid_cursor"),
                          ("cursor with a forged tag", "cursor=01KB0000000000000000000000.deadbeef", "invalid_cursor")]:
    api(f"list: {name}", "GET", f"/v1/requests?{query}", 400, code)

# --- routes and methods ---------------------------------------------------------------------
for name, method, path, status in [
    ("PUT the collection", "PUT", "/v1/requests", 405), ("PATCH the collection", "PATCH", "/v1/requests", 405),
    ("DELETE the collection", "DELETE", "/v1/requests", 405),
    ("POST a request", "POST", "/v1/requests/01KB0000000000000000000000", 405),
    ("PUT a report", "PUT", "/v1/requests/01KB0000000000000000000000/report", 405),
    ("unknown route", "GET", "/v1/everything", 404), ("admin route", "GET", "/admin", 404),
    ("version 2", "GET", "/v2/requests", 404),
    ("deep path", "GET", "/v1/requests/01KB0000000000000000000000/report/extra", 404),
    ("POST a certificate", "POST", "/v1/requests/01KB0000000000000000000000/certificate", 405),
    ("DELETE the certificate keys", "DELETE", "/v1/certificate-keys", 405),
    ("a certificate's deep path", "GET", "/v1/requests/01KB0000000000000000000000/certificate/x", 404),
]:
    api(f"route: {name}", method, path, status)

# --- SQS queues: straight onto the service's queues ----------------------------------------
now = "2026-11-29T10:00:00Z"
rid = "01KB0000000000000000000000"
sqs_common = [
    ("not JSON", "not json"), ("unclosed", "{"), ("null", "null"), ("array", "[]"), ("number", "42"),
    ("empty object", "{}"), ("huge", '{"x":"' + "a" * 240_000 + '"}'), ("deep nesting", "[" * 3000 + "]" * 3000),
]
export_answer = {"type": "export_answer", "version": 1, "message_id": "a", "request_id": rid,
                 "service": "billing", "job": "01KB0000000000000000000001", "outcome": "records",
                 "records": [{"n": 1}]}
# What the fan-out puts on the vendor-erasures queue (for a vendor whose registry entry has `batch`).
erase_command = {"version": 1, "type": "erase_subject", "message_id": "erase:" + rid + ":ads:1",
                 "idempotency_key": "erase:" + rid + ":ads", "request_id": rid, "service": "ads",
                 "subject": "victim", "attempt": 1, "sent_at": now}
# What an operator's CLI or the operations page puts on the confirmations queue.
operator_action = {"type": "operator_action", "version": 1, "message_id": "operator:resolve:" + rid + ":billing:x",
                   "request_id": rid, "service": "billing", "decision": "resolve", "outcome": "erased",
                   "evidence": "ticket 1", "operator": "mallory", "at": now}
queue_specific = {
    "AccessRequestsQueue": [
        ("truncated", '{"version":1,"message_id":"access:' + rid + '","request_id":"' + rid),
        ("version 2", json.dumps({"version": 2, "message_id": "m", "request_id": rid, "kind": "access", "sent_at": now})),
        ("version as a string", json.dumps({"version": "1", "message_id": "m", "request_id": rid, "kind": "access", "sent_at": now})),
        ("request id a number", json.dumps({"version": 1, "message_id": "m", "request_id": 7, "kind": "access", "sent_at": now})),
        ("unknown kind", json.dumps({"version": 1, "message_id": "m", "request_id": rid, "kind": "everything", "sent_at": now})),
        ("unknown request", json.dumps({"version": 1, "message_id": "m", "request_id": rid, "kind": "access", "sent_at": now})),
        ("export answer not from the broker", json.dumps({**export_answer})),
        ("export answer with a path for a job", json.dumps({**export_answer, "job": "../../reports/" + rid})),
        ("export answer with an unknown outcome", json.dumps({**export_answer, "outcome": "some"})),
        ("export answer failing with records", json.dumps({**export_answer, "outcome": "failed", "reason": "r"})),
        ("export answer with an extra field", json.dumps({**export_answer, "kind": "access"})),
    ],
    "ErasureRequestsQueue": [
        ("version 0", json.dumps({"version": 0, "message_id": "m", "request_id": rid, "kind": "erasure", "sent_at": now})),
        ("sent_at not a time", json.dumps({"version": 1, "message_id": "m", "request_id": rid, "kind": "erasure", "sent_at": "yesterday"})),
        ("request id with a path", json.dumps({"version": 1, "message_id": "m", "request_id": "../" + rid, "kind": "erasure", "sent_at": now})),
        ("unknown request", json.dumps({"version": 1, "message_id": "m", "request_id": rid, "kind": "erasure", "sent_at": now})),
    ],
    "VendorErasuresQueue": [
        ("command for an unknown request", json.dumps({**erase_command})),
        ("command to a service that takes no batches", json.dumps({**erase_command, "service": "billing"})),
        ("command of version 2", json.dumps({**erase_command, "version": 2})),
        ("command with an extra field", json.dumps({**erase_command, "url": "https://evil.example"})),
        ("command with an empty subject", json.dumps({**erase_command, "subject": ""})),
    ],
    "ConfirmationsQueue": [
        ("operator resolution of an unknown request", json.dumps({**operator_action})),
        ("operator resolution without evidence", json.dumps({k: v for k, v in operator_action.items() if k != "evidence"})),
        ("operator named with spaces and markup", json.dumps({**operator_action, "operator": "<b>jane doe</b>"})),
        ("operator decision unknown", json.dumps({**operator_action, "decision": "delete_everything"})),
        ("confirmation not from the broker", json.dumps({"type": "erasure_confirmation", "version": 1, "message_id": "c", "request_id": rid, "service": "billing", "outcome": "erased", "receipt": {}})),
        ("unknown type", json.dumps({"type": "erase_everything", "version": 1, "request_id": rid})),
        ("unknown outcome", json.dumps({"type": "erasure_confirmation", "version": 1, "message_id": "c", "request_id": rid, "service": "billing", "outcome": "maybe"})),
        ("check for an unknown request", json.dumps({"type": "obligation_due", "version": 1, "message_id": "check:" + rid + ":billing:1", "request_id": rid, "service": "billing", "attempt": 1})),
        ("receipt for an unknown request", json.dumps({"type": "published", "version": 1, "message_id": "notice:erasure_notice:" + rid, "request_id": rid, "published_at": now})),
        ("service name with spaces", json.dumps({"type": "erasure_confirmation", "version": 1, "message_id": "c", "request_id": rid, "service": "bill ing", "outcome": "erased"})),
        ("attempt negative", json.dumps({"type": "obligation_due", "version": 1, "message_id": "x", "request_id": rid, "service": "billing", "attempt": -1})),
    ],
    "ScheduleRequestsQueue": [
        ("unknown action", json.dumps({"action": "explode", "version": 1, "key": "k"})),
        ("key too long", json.dumps({"action": "cancel", "version": 1, "key": "k" * 500})),
        ("key empty", json.dumps({"action": "cancel", "version": 1, "key": ""})),
        ("deliver_at past year 9999", json.dumps({"action": "schedule", "version": 1, "key": "k", "deliver_at": "+10000-01-01T00:00:00Z", "destination": {"kind": "sqs", "queue_url": "$confirmations_queue"}, "payload": {}})),
        ("a decade ahead", json.dumps({"action": "schedule", "version": 1, "key": "k2", "deliver_at": "2099-01-01T00:00:00Z", "destination": {"kind": "sqs", "queue_url": "$confirmations_queue"}, "payload": {}})),
        ("destination unknown kind", json.dumps({"action": "schedule", "version": 1, "key": "k", "deliver_at": now, "destination": {"kind": "http", "url": "https://evil.example"}, "payload": {}})),
        ("to a foreign SQS queue", json.dumps({"action": "schedule", "version": 1, "key": "k", "deliver_at": now, "destination": {"kind": "sqs", "queue_url": "https://sqs.us-east-1.amazonaws.com/1/other"}, "payload": {}})),
        ("destination without routing key", json.dumps({"action": "schedule", "version": 1, "key": "k", "deliver_at": now, "destination": {"kind": "rabbitmq", "exchange": "$ns.commands"}, "payload": {}})),
    ],
    # Only the bridge writes it, stamping the publisher: unstamped, it is no system's.
    "SubmissionsQueue": [
        ("a submission nobody vouches for", json.dumps({"version": 1, "type": "submit_request", "message_id": "s1", "subject": "victim", "request": "erasure"})),
        ("an unknown request type", json.dumps({"version": 1, "type": "submit_request", "message_id": "s2", "subject": "victim", "request": "delete_everything"})),
        ("an unknown field", json.dumps({"version": 1, "type": "submit_request", "message_id": "s3", "subject": "victim", "request": "access", "priority": "now"})),
        ("a subject with control characters", json.dumps({"version": 1, "type": "submit_request", "message_id": "s4", "subject": "vic\u0000tim", "request": "access"})),
    ],
    "OutboundQueue": [
        ("envelope without exchange name", json.dumps({"version": 1, "message_id": "m", "exchange": "", "routing_key": "k", "payload": {}})),
        ("envelope to amq.direct", json.dumps({"version": 1, "message_id": "m", "exchange": "amq.direct", "routing_key": "k", "payload": {}})),
        ("envelope to a foreign exchange", json.dumps({"version": 1, "message_id": "m", "exchange": "payments", "routing_key": "k", "payload": {}})),
        ("event without type", json.dumps({"version": 1, "message_id": "m"})),
        ("receipt not a boolean", json.dumps({"version": 1, "message_id": "m", "exchange": "$ns.commands", "routing_key": "k", "payload": {"request_id": rid}, "receipt": "yes"})),
        ("receipt without request", json.dumps({"version": 1, "message_id": "m", "exchange": "$ns.commands", "routing_key": "k", "payload": {}, "receipt": True})),
        ("version 9", json.dumps({"version": 9, "message_id": "m", "type": "report_ready"})),
    ],
}
for queue, specific in queue_specific.items():
    for name, body in sqs_common + specific:
        cases.append({"name": f"{queue}: {name}", "channel": "sqs", "queue": queue, "body": body,
                      "expect": "dead_lettered"})

# --- RabbitMQ: what services publish to the bridge -------------------------------------------
confirmation = {"type": "erasure_confirmation", "version": 1, "message_id": "c", "request_id": rid,
                "service": "billing", "outcome": "erased", "receipt": {}}
amqp = [
    ("not JSON", b"not json", "guest"), ("empty", b"", "guest"), ("invalid UTF-8", b'{"type":"\xff"}', "guest"),
    ("truncated", json.dumps(confirmation)[:40].encode(), "guest"),
    ("wrong types", json.dumps({**confirmation, "request_id": 5}).encode(), "guest"),
    ("unknown version", json.dumps({**confirmation, "version": 7}).encode(), "guest"),
    ("over 250 KiB", json.dumps({**confirmation, "receipt": {"pad": "a" * 300_000}}).encode(), "guest"),
    ("no user_id", json.dumps(confirmation).encode(), None),
    ("not the service's broker user", json.dumps(confirmation).encode(), "guest"),
    ("a check from outside", json.dumps({"type": "obligation_due", "version": 1, "message_id": "x", "request_id": rid, "service": "billing", "attempt": 9}).encode(), "guest"),
    ("a receipt from outside", json.dumps({"type": "published", "version": 1, "message_id": "notice:erasure_notice:" + rid, "request_id": rid, "published_at": now}).encode(), "guest"),
    ("NUL bytes", b"\x00" * 32, "guest"), ("JSON array", b"[1,2,3]", "guest"),
    ("an export answer from a stranger", json.dumps(export_answer).encode(), "guest"),
    ("an export answer with a made-up job", json.dumps({**export_answer, "job": "x"}).encode(), "guest"),
    ("deep nesting", b"[" * 3000 + b"]" * 3000, "guest"),
    ("an operator's decision from a holder", json.dumps(operator_action).encode(), "guest"),
]
for name, body, user in amqp:
    cases.append({"name": f"confirmations exchange: {name}", "channel": "amqp", "exchange": "confirmations",
                  "body_base64": b64(body), "user_id": user, "expect": "dead_lettered"})
schedule_amqp = [
    ("not JSON", b"{{{", "guest"), ("invalid UTF-8", b"\xc3\x28", "guest"),
    ("from a stranger", json.dumps({"action": "cancel", "version": 1, "key": "k"}).encode(), "guest"),
    ("no user_id", json.dumps({"action": "cancel", "version": 1, "key": "k"}).encode(), None),
    ("unknown action", json.dumps({"action": "explode", "version": 1, "key": "k"}).encode(), "guest"),
    ("over 250 KiB", json.dumps({"action": "schedule", "version": 1, "key": "k", "deliver_at": now, "destination": {"kind": "rabbitmq", "exchange": "x", "routing_key": "y"}, "payload": "a" * 300_000}).encode(), "guest"),
]
submission = {"version": 1, "type": "submit_request", "message_id": "h1", "subject": "victim", "request": "erasure"}
requests_amqp = [
    ("not JSON", b"{{", "guest"),
    ("from a system not allowed to submit", json.dumps(submission).encode(), "guest"),
    ("no user_id", json.dumps(submission).encode(), None),
    ("version 2", json.dumps({**submission, "version": 2}).encode(), "guest"),
    ("an empty subject", json.dumps({**submission, "subject": ""}).encode(), "guest"),
    ("a confirmation on the wrong exchange", json.dumps(confirmation).encode(), "guest"),
    ("a reference carrying a note", json.dumps({**submission, "reference": "see <the notes> please"}).encode(), "guest"),
]
for name, body, user in requests_amqp:
    cases.append({"name": f"requests exchange: {name}", "channel": "amqp", "exchange": "requests",
                  "body_base64": b64(body), "user_id": user, "expect": "dead_lettered"})
for name, body, user in schedule_amqp:
    cases.append({"name": f"schedule exchange: {name}", "channel": "amqp", "exchange": "schedule",
                  "body_base64": b64(body), "user_id": user, "expect": "dead_lettered"})

def compress(case):
    """Keeps the corpus small: a long run of one character becomes `@PAD@` and `pad`."""
    import re
    key = "body" if "body" in case else "body_base64" if "body_base64" in case else None
    if key is None:
        return
    text = case[key] if key == "body" else base64.b64decode(case[key]).decode("latin-1")
    run = max(re.finditer(r"(.)\1{999,}", text, re.S), key=lambda m: len(m.group(0)), default=None)
    if run is None or len(run.group(0)) < 10_000:
        return
    case["pad"] = {"char": run.group(1), "count": len(run.group(0))}
    rest = text[:run.start()] + "@PAD@" + text[run.end():]
    if key == "body":
        case["body"] = rest
    else:
        case["body_base64"] = b64(rest.encode("latin-1"))


for case in cases:
    compress(case)

names = [c["name"] for c in cases]
assert len(names) == len(set(names)), "case names are unique"
out = os.path.join(os.path.dirname(__file__), "corpus.json")
with open(out, "w") as f:
    json.dump({"description": "Hostile input for every door of the service; see generate.py.",
               "cases": cases}, f, indent=1, ensure_ascii=True)
    f.write("\n")
by = {}
for c in cases:
    by[c["channel"]] = by.get(c["channel"], 0) + 1
print(f"{len(cases)} cases: {by}")
