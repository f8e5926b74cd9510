"""An example holder of personal data for the GDPR Data Subject Rights service, in Python with
pika (docs/holders.md): it takes `erase_subject` and `export_subject` commands from its own
queue, erases once per idempotency key (the key is written in the same SQLite transaction as
the erasure), answers on the confirmations exchange as its own broker user, and dead-letters
what it cannot read.

    pip install pika==1.3.2
    AMQP_URL=amqp://svc-ledger:secret@127.0.0.1:5672/%2f HOLDER_SERVICE=ledger \
    HOLDER_BROKER_USER=svc-ledger python3 holder.py [--seed alice bob ...]
"""

import json
import os
import sqlite3
import sys
import time
import urllib.request

import pika

NAMESPACE = os.environ.get("RABBITMQ_NAMESPACE", "gdpr")
SERVICE = os.environ["HOLDER_SERVICE"]
BROKER_USER = os.environ["HOLDER_BROKER_USER"]
AMQP_URL = os.environ["AMQP_URL"]
DATABASE = os.environ.get("HOLDER_DB", f"{SERVICE}.sqlite3")
# Answers bigger than this are uploaded to the command's URL (the bridge forwards answers of
# up to 250 KiB).
MOST_INLINE_BYTES = 128 * 1024

QUEUE = f"{NAMESPACE}.svc.{SERVICE}"
DEAD_LETTERS = f"{QUEUE}.dead-letter"


def open_store():
    db = sqlite3.connect(DATABASE)
    db.execute("CREATE TABLE IF NOT EXISTS records (subject TEXT, record TEXT)")
    db.execute("CREATE TABLE IF NOT EXISTS erasures (key TEXT PRIMARY KEY, outcome TEXT)")
    db.commit()
    return db


def seed(db, subject):
    """Puts a few example records about `subject` in the store (to try it out)."""
    with db:
        db.execute("DELETE FROM records WHERE subject = ?", (subject,))
        for n in (1, 2):
            db.execute("INSERT INTO records VALUES (?, ?)", (subject, json.dumps({"kind": "example", "n": n})))


def erase(db, key, subject):
    """Erases `subject` once per `key`; a key seen before gets its first outcome again."""
    with db:  # one transaction: the erasure and the key it was done for
        seen = db.execute("SELECT outcome FROM erasures WHERE key = ?", (key,)).fetchone()
        if seen:
            return seen[0]
        deleted = db.execute("DELETE FROM records WHERE subject = ?", (subject,)).rowcount
        outcome = "erased" if deleted else "not_found"
        db.execute("INSERT INTO erasures VALUES (?, ?)", (key, outcome))
        return outcome


def erasure_confirmation(db, command):
    outcome = erase(db, command["idempotency_key"], command["subject"])
    return f"confirmation.{SERVICE}", {
        "type": "erasure_confirmation",
        "version": 1,
        "message_id": f"confirmation:{command['message_id']}",
        "request_id": command["request_id"],
        "service": command["service"],
        "outcome": outcome,
        "receipt": {"idempotency_key": command["idempotency_key"]},
    }


def export_answer(db, command):
    rows = db.execute("SELECT record FROM records WHERE subject = ?", (command["subject"],)).fetchall()
    records = [json.loads(row[0]) for row in rows]
    answer = {
        "type": "export_answer",
        "version": 1,
        "message_id": f"answer:{command['message_id']}",
        "request_id": command["request_id"],
        "service": command["service"],
        "job": command["job"],
    }
    lines = "".join(json.dumps(r) + "\n" for r in records).encode()
    if not records:
        answer["outcome"] = "not_found"
    elif len(lines) <= MOST_INLINE_BYTES:
        answer["outcome"] = "records"
        answer["records"] = records
    else:
        upload = urllib.request.Request(command["upload_url"], data=lines, method="PUT",
                                        headers={"Content-Type": "application/x-ndjson"})
        try:
            urllib.request.urlopen(upload, timeout=60).close()
            answer["outcome"] = "uploaded"
        except OSError as error:
            answer["outcome"] = "failed"
            answer["reason"] = f"the upload failed: {type(error).__name__}"
    return f"export.{SERVICE}", answer


def declare(channel):
    """The exchanges, the holder's queue with its dead-letter queue, its two bindings."""
    for exchange in ("commands", "confirmations"):
        channel.exchange_declare(f"{NAMESPACE}.{exchange}", exchange_type="topic", durable=True)
    channel.queue_declare(DEAD_LETTERS, durable=True)
    channel.queue_declare(QUEUE, durable=True, arguments={
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": DEAD_LETTERS,
    })
    for key in ("erasure", "export"):
        channel.queue_bind(QUEUE, f"{NAMESPACE}.commands", routing_key=f"{key}.{SERVICE}")


def serve(db):
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    declare(channel)
    # Publisher confirms: basic_publish returns once the broker has the answer, and only then
    # is the command acknowledged (a crash in between brings the command back).
    channel.confirm_delivery()
    channel.basic_qos(prefetch_count=16)

    def on_command(ch, method, properties, body):
        try:
            command = json.loads(body)
            handle = {"erase_subject": erasure_confirmation,
                      "export_subject": export_answer}[command["type"]]
            routing_key, answer = handle(db, command)
        except (ValueError, KeyError, TypeError):
            # Not a command it can read: to the dead-letter queue, for a person to look at.
            ch.basic_reject(method.delivery_tag, requeue=False)
            return
        ch.basic_publish(
            exchange=f"{NAMESPACE}.confirmations",
            routing_key=routing_key,
            body=json.dumps(answer),
            properties=pika.BasicProperties(
                message_id=answer["message_id"],
                user_id=BROKER_USER,  # RabbitMQ checks it is the connection's user
                content_type="application/json",
                delivery_mode=2,
            ),
        )
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(QUEUE, on_command)
    print(f"{SERVICE}: serving {QUEUE}", flush=True)
    channel.start_consuming()


def main():
    db = open_store()
    if len(sys.argv) >= 3 and sys.argv[1] == "--seed":
        for subject in sys.argv[2:]:
            seed(db, subject)
    while True:
        try:
            serve(db)
        except pika.exceptions.AMQPError as error:
            print(f"{SERVICE}: {error!r}; reconnecting in 2 s", file=sys.stderr, flush=True)
            time.sleep(2)


if __name__ == "__main__":
    main()
