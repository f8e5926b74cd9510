"""moto in server mode, with DynamoDB transactions made atomic.

moto applies a TransactWriteItems request item by item, and undoes a cancelled one by putting
back a copy of the whole table taken when it started. Its server answers on many threads, so
two transactions can interleave: a cancelled transaction's half is seen by others, or its undo
wipes another's committed write. DynamoDB's transactions are atomic, and the service relies on
it ("one open request per subject" is a condition in the same transaction as the request).

Here transactions run one at a time, and one whose conditions do not all hold is cancelled
before anything is written (so there is nothing to undo). Plain reads and writes are not held
up: locking them too halved the emulator's throughput.
"""

import threading

from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import TransactionCanceledException
from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

_transactions = threading.Lock()
_apply = DynamoDBBackend.transact_write_items


def _failed_conditions(backend, transact_items):
    """Per item, whether its condition fails against the table as it is now. Writes nothing."""
    failed = []
    for item in transact_items:
        _, op = next(iter(item.items()))
        condition = op.get("ConditionExpression")
        if condition is None:
            failed.append(False)
            continue
        if "Item" in op:
            table = backend.get_table(op["TableName"])
            key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
            if table.range_key_attr is not None:
                key[table.range_key_attr] = op["Item"][table.range_key_attr]
        else:
            key = op["Key"]
        current = backend.get_item(op["TableName"], key)
        holds = get_filter_expression(
            condition,
            op.get("ExpressionAttributeNames"),
            op.get("ExpressionAttributeValues"),
        ).expr(current)
        failed.append(not holds)
    return failed


def transact_write_items(self, transact_items):
    with _transactions:
        try:
            failed = _failed_conditions(self, transact_items)
        except Exception:  # noqa: BLE001 - a malformed request: moto itself says what is wrong
            failed = []
        if any(failed):
            raise TransactionCanceledException(
                [
                    ("ConditionalCheckFailed", "The conditional request failed", None)
                    if fails
                    else (None, None, None)
                    for fails in failed
                ]
            )
        return _apply(self, transact_items)


DynamoDBBackend.transact_write_items = transact_write_items

if __name__ == "__main__":
    main()
