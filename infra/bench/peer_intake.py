"""The benchmark's peer: the submission the intake function makes, written the way a user of
Python 3.11 + boto3 would write it, run by `awslambdaric` (the runtime interface client of
AWS's Python images) under the same local Runtime API as the Rust functions.

Same work as the Rust intake's `POST /v1/requests`: the subject from the authorizer's `sub`
claim, its keyed hash (HMAC-SHA256 with the key read from SSM at init), one DynamoDB
transaction (the request, the one-open-request guard, the audit event, the hop count and the
access quota slot, each with the same condition), one SQS `SendMessage` (the work message),
and 202 with the request. Nothing else: no validation the Rust side does beyond the body's
type, so the comparison favours the peer, if anything.
"""

import datetime
import hashlib
import hmac
import json
import os
import secrets
import time

import boto3

_dynamodb = boto3.client("dynamodb")
_sqs = boto3.client("sqs")
_key = boto3.client("ssm").get_parameter(
    Name=os.environ["SUBJECT_HASH_KEY_PARAMETER"], WithDecryption=True
)["Parameter"]["Value"].encode()
_requests = os.environ["REQUESTS_TABLE"]
_hops = os.environ["HOPS_TABLE"]
_queues = {
    "access": os.environ["ACCESS_REQUESTS_QUEUE_URL"],
    "erasure": os.environ["ERASURE_REQUESTS_QUEUE_URL"],
}
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _ulid():
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def _at(moment):
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _answer(status, body):
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body),
    }


def handler(event, context):
    claims = ((event.get("requestContext") or {}).get("authorizer") or {}).get("jwt") or {}
    subject = (claims.get("claims") or {}).get("sub")
    if not subject:
        return _answer(401, {"error": {"code": "unauthenticated"}})
    try:
        kind = json.loads(event.get("body") or "{}")["type"]
    except (ValueError, KeyError, TypeError):
        return _answer(400, {"error": {"code": "invalid_body"}})
    if kind not in _queues:
        return _answer(400, {"error": {"code": "invalid_type"}})
    digest = hmac.new(_key, subject.encode(), hashlib.sha256).hexdigest()
    now = datetime.datetime.now(datetime.timezone.utc)
    request_id = _ulid()
    received = _at(now)
    not_there = "attribute_not_exists(pk)"
    items = [
        {"Put": {"TableName": _requests, "ConditionExpression": not_there, "Item": {
            "pk": {"S": f"REQ#{request_id}"}, "sk": {"S": "META"},
            "id": {"S": request_id}, "kind": {"S": kind}, "subject": {"S": subject},
            "subject_hash": {"S": digest}, "state": {"S": "received"},
            "received_at": {"S": received}, "updated_at": {"S": received},
            "due_at": {"S": _at(now + datetime.timedelta(days=30))},
            "enqueued_at": {"S": received}, "attempts": {"N": "0"},
            "fencing_token": {"N": "0"},
        }}},
        {"Put": {"TableName": _requests, "ConditionExpression": not_there, "Item": {
            "pk": {"S": f"SUBJ#{digest}"}, "sk": {"S": f"OPEN#{kind}"},
            "request_id": {"S": request_id},
        }}},
        {"Put": {"TableName": _requests, "Item": {
            "pk": {"S": f"REQ#{request_id}"}, "sk": {"S": f"EVT#{received}#submitted"},
            "event": {"S": "submitted"}, "at": {"S": received}, "actor": {"S": "intake"},
        }}},
        {"Put": {"TableName": _hops, "Item": {
            "pk": {"S": f"{kind}#{now:%Y-%m-%dT%H}"},
            "sk": {"S": f"submitted#{request_id}"},
            "request": {"S": request_id}, "first_at": {"S": received},
            "last_at": {"S": received}, "times": {"N": "1"}, "outcome": {"S": "created"},
            "expires_at": {"N": str(int(now.timestamp()) + 90 * 86400)},
        }}},
    ]
    if kind == "access":
        used_at = int(now.timestamp() * 1000)
        items.append({"Put": {
            "TableName": _requests,
            "ConditionExpression": "attribute_not_exists(pk) OR used_at <= :since",
            "ExpressionAttributeValues": {":since": {"N": str(used_at - 86_400_000)}},
            "Item": {
                "pk": {"S": f"QUOTA#{digest}#{kind}"},
                "sk": {"S": f"SLOT#{secrets.randbelow(3)}"},
                "request_id": {"S": request_id}, "used_at": {"N": str(used_at)},
                "expires_at": {"N": str(int(now.timestamp()) + 2 * 86400)},
            },
        }})
    try:
        _dynamodb.transact_write_items(TransactItems=items)
    except _dynamodb.exceptions.TransactionCanceledException:
        return _answer(409, {"error": {"code": "request_already_open"}})
    _sqs.send_message(
        QueueUrl=_queues[kind],
        MessageBody=json.dumps({
            "version": 1, "message_id": f"request:{request_id}", "request_id": request_id,
            "kind": kind, "sent_at": received,
        }),
    )
    return _answer(202, {"id": request_id, "type": kind, "state": "received",
                         "received_at": received})
