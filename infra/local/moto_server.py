"""moto in server mode, with DynamoDB transactions made atomic.

moto applies a TransactWriteItems request item by item, and undoes a cancelled one by putting
back a copy of the whole table taken when it started. Its server answers on many threads, so
two transactions can interleave: a cancelled transaction's half is seen by others, or its undo
wipes another's committed write. DynamoDB's transactions are atomic, and the service relies on
it ("one open request per subject" is a condition in the same transaction as the request).

Here transactions run one at a time, and one whose conditions do not all hold is cancelled
before anything is written (so there is nothing to undo). Plain reads and writes are not held
up: locking them too halved the emulator's throughput.

moto also backs up every table a transaction touches, whole (a deep copy per transaction):
the emulator slowed down as tables grew, and its memory grew by about 50 KB per transaction
(12 GB in 20 minutes of the proving ground's 500-request run). Here only the items the
transaction writes are kept, and put back if moto cancels it after all.

And moto answers every Query by sorting every item of the table (then keeping the partition's,
then sorting those): a query cost grew with the whole table, and queries were most of the
emulator's time in the proving ground's runs. Here a query of the table reads its partition
only, and a query of an index skips the first sort (its results are sorted afterwards).

moto's SQS receive checks each message it hands out against the queue's retention period by
computing every attribute of the queue three times over (each count walks every message):
a receive of ten cost ninety walks of the queue, and receives paced the proving ground once
queries no longer did. Here the check reads the retention period. Every send computes every
attribute too (for one setting), and each walk asks the clock twice per message: here a walk
of the queue reads the clock once. And moto deletes a message
by rebuilding the queue's list and swapping it in, without the lock its sends append under:
a message sent while another is deleted can be dropped from the list. Here a delete removes
the one message in place, under that lock.
"""

import copy
import inspect
import threading

import moto.dynamodb.models as dynamodb_models
from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import TransactionCanceledException
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.table import Table
from moto.core.utils import unix_time, unix_time_millis
from moto.server import main
from moto.sqs.exceptions import ReceiptHandleIsInvalid
from moto.sqs.models import Queue, SQSBackend


class _NoTableCopies:
    """moto's `copy` module, except that a whole table is not copied: its transaction backup
    becomes the table itself (a no-op restore); `transact_write_items` below undoes per item."""

    def __getattr__(self, name):
        return getattr(copy, name)

    @staticmethod
    def deepcopy(value, memo=None):
        if isinstance(value, Table):
            return value
        return copy.deepcopy(value, memo)


dynamodb_models.copy = _NoTableCopies()

_query_scope = threading.local()
_table_query = Table.query
_table_all_items = Table.all_items


_query_signature = inspect.signature(_table_query)


def _query(self, *args, **kwargs):
    # moto passes `index_name` by position.
    arguments = _query_signature.bind(self, *args, **kwargs).arguments
    _query_scope.current = (arguments.get("index_name"), arguments.get("hash_key"))
    try:
        return _table_query(self, *args, **kwargs)
    finally:
        _query_scope.current = None


def _all_items(self):
    scope = getattr(_query_scope, "current", None)
    if scope is None:
        return _table_all_items(self)
    index_name, hash_key = scope
    if index_name is not None:
        # Filtered and sorted by the index's keys afterwards: no need to sort them all first.
        items = []
        for partition in self.items.values():
            if self.range_key_attr:
                items.extend(partition.values())
            else:
                items.append(partition)
        return items
    partition = self.items.get(hash_key)
    if partition is None:
        return []
    return list(partition.values()) if self.range_key_attr else [partition]


Table.query = _query
Table.all_items = _all_items

_transactions = threading.Lock()
_apply = DynamoDBBackend.transact_write_items


def _key(backend, op):
    if "Item" in op:
        table = backend.get_table(op["TableName"])
        key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
        if table.range_key_attr is not None:
            key[table.range_key_attr] = op["Item"][table.range_key_attr]
        return key
    return op["Key"]


def _failed_conditions(backend, transact_items):
    """Per item, whether its condition fails against the table as it is now. Writes nothing."""
    failed = []
    for item in transact_items:
        _, op = next(iter(item.items()))
        condition = op.get("ConditionExpression")
        if condition is None:
            failed.append(False)
            continue
        current = backend.get_item(op["TableName"], _key(backend, op))
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
        # What each written item was, to put back if moto cancels the transaction anyway.
        before = []
        try:
            for item in transact_items:
                _, op = next(iter(item.items()))
                key = _key(self, op)
                current = self.get_item(op["TableName"], key)
                before.append((op["TableName"], key, copy.deepcopy(current)))
        except Exception:  # noqa: BLE001 - malformed: moto's own checks answer it below
            before = []
        try:
            return _apply(self, transact_items)
        except Exception:
            for table_name, key, item in reversed(before):
                if item is None:
                    try:
                        self.delete_item(table_name, key)
                    except Exception:  # noqa: BLE001 - it was never written
                        pass
                else:
                    self.get_table(table_name).put_item(item.to_json()["Attributes"])
            raise


DynamoDBBackend.transact_write_items = transact_write_items


def _retained(self, queue_name, message):
    retention_period = int(self.get_queue(queue_name).message_retention_period)
    return retention_period + message.sent_timestamp / 1000 > unix_time()


def _had(message, receipt_handle):
    return (
        message.receipt_handle == receipt_handle
        or receipt_handle in message._old_receipt_handles
    )


def _delete_message(self, receipt_handle):
    if receipt_handle in self.deleted_messages:
        # Already deleted: deleting again succeeds, as in SQS.
        return
    with self._messages_lock:
        for index, message in enumerate(self._messages):
            if _had(message, receipt_handle):
                del self._messages[index]
                self.pending_messages.discard(message)
                self.deleted_messages.update(message.all_receipt_handles)
                return
    raise ReceiptHandleIsInvalid()


def _visible_now(queue):
    now = unix_time_millis()
    return [m for m in queue._messages if now > m.visible_at and not now < m.delayed_until]


def _delayed_count(queue):
    now = unix_time_millis()
    return sum(1 for m in queue._messages if now < m.delayed_until)


def _not_visible_count(queue):
    now = unix_time_millis()
    return sum(1 for m in queue._messages if not now > m.visible_at)


SQSBackend.is_message_valid_based_on_retention_period = _retained
Queue.messages = property(_visible_now)
Queue.approximate_number_of_messages = property(lambda queue: len(_visible_now(queue)))
Queue.approximate_number_of_messages_delayed = property(_delayed_count)
Queue.approximate_number_of_messages_not_visible = property(_not_visible_count)
Queue.delete_message = _delete_message

if __name__ == "__main__":
    main()
