"""moto in server mode, with DynamoDB's writes made atomic.

moto applies a TransactWriteItems request item by item and undoes a cancelled one by putting
back a copy of the whole table taken when it started. Its server answers requests on many
threads, so two transactions (or a write beside a cancelled transaction) can interleave: a
cancelled transaction's half is seen by others, or its undo wipes another's committed write.
DynamoDB's transactions are atomic, and the service relies on it ("one open request per
subject" is a condition in the same transaction as the request). One lock around moto's
DynamoDB write paths gives the emulator that guarantee; reads are not held up.
"""

import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

_writes = threading.RLock()


def _serialized(method):
    def run(self, *args, **kwargs):
        with _writes:
            return method(self, *args, **kwargs)

    run.__name__ = method.__name__
    run.__doc__ = method.__doc__
    return run


for _name in (
    "put_item",
    "update_item",
    "delete_item",
    "transact_write_items",
    "batch_write_item",
):
    if hasattr(DynamoDBBackend, _name):
        setattr(DynamoDBBackend, _name, _serialized(getattr(DynamoDBBackend, _name)))

if __name__ == "__main__":
    main()
