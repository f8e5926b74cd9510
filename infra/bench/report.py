"""Writes docs/performance.md from what `make bench` measured: the functions' sizes as
`make package` built them for arm64, and target/bench/lambda.json (lambda-bench: cold starts,
the intake beside its Python peer). Each figure beside its budget, and whether it is met.

usage: report.py <target dir> <output markdown>
"""

import datetime
import json
import os
import platform
import subprocess
import sys

SIZE_BUDGET = 6_000_000
INIT_MEDIAN_BUDGET_MS = 5.0
INIT_MAX_BUDGET_MS = 15.0
RSS_BUDGET_KIB = 12 * 1024
CPU_RATIO_BUDGET = 0.25


# Public on-demand prices, us-east-1, as AWS lists them (2026-11): dollars per million.
PRICES = {
    "dynamodb_write_unit": 0.625,   # on-demand write request unit (≤ 1 KB; a transaction's item: 2)
    "dynamodb_read_unit": 0.125,    # on-demand read request unit (≤ 4 KB, strongly consistent)
    "sqs_request": 0.40,            # standard queue, per 64 KB chunk of a request
    "s3_put_class": 5.00,           # PUT, COPY, POST, LIST
    "s3_get_class": 0.40,           # GET, HEAD
    "scheduler_invocation": 1.00,   # EventBridge Scheduler
    "lambda_request": 0.20,
    "lambda_gb_second_arm64": 16.6667 * 0.8,  # $0.0000133334 per GB-s (arm64)
    "http_api_request": 1.00,       # API Gateway HTTP API, first 300 million
}
# Each invocation at 128 MB for this long (ms): the intake's measured p50 is in the table above;
# the queue-fed functions do a few calls each, the same order.
ASSUMED_INVOCATION_MS = 50


def price_of(calls):
    """Dollars per million requests of one kind, by AWS service, from its counted calls."""
    cost = {"DynamoDB": 0.0, "SQS": 0.0, "S3": 0.0, "Scheduler": 0.0, "Lambda": 0.0, "API Gateway": 1.0}
    messages = 0
    for c in calls:
        service, operation = c["operation"].split(".", 1)
        units = c["units"]
        if service == "DynamoDB":
            if operation.startswith("Transact") and "Write" in operation:
                cost["DynamoDB"] += 2 * units * PRICES["dynamodb_write_unit"]
            elif operation in ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"):
                cost["DynamoDB"] += units * PRICES["dynamodb_write_unit"]
            else:
                cost["DynamoDB"] += units * PRICES["dynamodb_read_unit"]
        elif service == "SQS":
            cost["SQS"] += units * PRICES["sqs_request"]
            if operation.startswith("SendMessage"):
                messages += units
        elif service == "S3":
            if operation in ("GetObject", "HeadObject"):
                cost["S3"] += PRICES["s3_get_class"]
            elif operation not in ("DeleteObject", "AbortMultipartUpload"):
                cost["S3"] += PRICES["s3_put_class"]
        elif service == "Scheduler":
            cost["Scheduler"] += PRICES["scheduler_invocation"]
    # Each delayed message (the dispatch function stores one item per key) wakes the dispatch
    # function once through EventBridge Scheduler in AWS; the local stack finds due messages by
    # its timer instead, so the schedules are counted from the items.
    delayed = sum(
        c["units"] for c in calls
        if c["function"] == "dispatch" and c["operation"] == "DynamoDB.PutItem"
    )
    cost["Scheduler"] += delayed * PRICES["scheduler_invocation"]
    # Every message sent is received and deleted by a Lambda event source mapping (SQS bills
    # those two calls; batching makes it fewer) and is, at most, one invocation of its function.
    cost["SQS"] += 2 * messages * PRICES["sqs_request"]
    invocations = 1 + messages + delayed
    cost["Lambda"] = invocations * (
        PRICES["lambda_request"]
        + PRICES["lambda_gb_second_arm64"] * 0.125 * ASSUMED_INVOCATION_MS / 1000
    )
    return cost, invocations


def verdict(ok):
    return "met" if ok else "**not met**"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def rustc():
    try:
        return subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "rustc (unknown)"


def main():
    target, out = sys.argv[1], sys.argv[2]
    with open(os.path.join(target, "bench", "lambda.json")) as f:
        bench = json.load(f)
    submissions = bench.pop("submissions")
    functions = bench
    sizes = {}
    for name, figures in functions.items():
        path = os.path.join(target, "lambda-arm64", figures["binary"], "bootstrap")
        sizes[name] = os.path.getsize(path) if os.path.exists(path) else None

    rust, peer = submissions["rust"], submissions["python_peer"]
    known = [s for s in sizes.values() if s is not None]
    init_medians = [f["init_ms"]["median"] for f in functions.values()]
    init_maxes = [f["init_ms"]["max"] for f in functions.values()]
    cpu_ratio = rust["cpu_ms_per_submission"] / peer["cpu_ms_per_submission"]
    wall_ratio = rust["wall_ms"]["p50"] / peer["wall_ms"]["p50"]
    calls = submissions.get("aws_calls_per_submission", {})

    lines = [
        "# Performance",
        "",
        "Written by `make bench` (`infra/bench/report.py`); do not edit by hand. Every figure is",
        "from one run on one machine: the functions' release builds, each in its own process",
        "under a local Lambda Runtime API (`infra/local/src/runtime_api.rs`), against the",
        "emulator, beside the intake's Python 3.11 + boto3 peer (`infra/bench/peer_intake.py`,",
        "run by `awslambdaric`, the runtime interface client of AWS's Python images).",
        "",
        f"Machine: {os.cpu_count()} cores, {cpu_model()}, {platform.system()} {platform.release()};",
        f"{rustc()}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        "| figure | measured | budget | |",
        "|---|---|---|---|",
    ]
    if known:
        lines.append(
            f"| `bootstrap` size per function (arm64, stripped, as `make package` builds it) "
            f"| {min(known) / 1e6:.1f}–{max(known) / 1e6:.1f} MB | ≤ 6 MB each "
            f"| {verdict(max(known) <= SIZE_BUDGET)} |"
        )
    lines += [
        f"| cold start: exec → first `/next`, median of {len(next(iter(functions.values()))['init_ms']['runs'])} per function "
        f"| {min(init_medians):.1f}–{max(init_medians):.1f} ms (max {min(init_maxes):.1f}–{max(init_maxes):.1f} ms) "
        f"| ≤ 5 ms median, ≤ 15 ms max "
        f"| {verdict(max(init_medians) <= INIT_MEDIAN_BUDGET_MS and max(init_maxes) <= INIT_MAX_BUDGET_MS)} |",
        f"| the Python peer's cold start, same harness | {submissions['python_peer_init_ms']['median']:.0f} ms median "
        f"(max {submissions['python_peer_init_ms']['max']:.0f} ms) | (for comparison) | |",
        f"| intake peak RSS after {rust['submissions']} submissions | {rust['peak_rss_kib'] / 1024:.1f} MB "
        f"(peer {peer['peak_rss_kib'] / 1024:.1f} MB) | ≤ 12 MB | {verdict(rust['peak_rss_kib'] <= RSS_BUDGET_KIB)} |",
    ]
    if calls:
        total = sum(calls.values())
        listed = ", ".join(f"{k} {v:g}" for k, v in sorted(calls.items()))
        lines.append(
            f"| AWS calls per submission | {total:g} ({listed}) | 2 | {verdict(total <= 2)} |"
        )
    lines += [
        f"| intake CPU per submission vs the peer | {rust['cpu_ms_per_submission']:.2f} ms vs "
        f"{peer['cpu_ms_per_submission']:.2f} ms ({cpu_ratio:.2f}×) | ≤ 0.25× | {verdict(cpu_ratio <= CPU_RATIO_BUDGET)} |",
        f"| intake wall time per submission vs the peer (p50) | {rust['wall_ms']['p50']:.1f} ms vs "
        f"{peer['wall_ms']['p50']:.1f} ms ({wall_ratio:.2f}×) | faster than the peer | {verdict(wall_ratio < 1)} |",
        "",
        "## Per function",
        "",
        "| function | binary | arm64 bytes | init median (ms) | init max (ms) |",
        "|---|---|---|---|---|",
    ]
    for name, figures in functions.items():
        size = sizes[name]
        lines.append(
            f"| {name} | `{figures['binary']}` | {size if size is not None else 'not built'} "
            f"| {figures['init_ms']['median']:.2f} | {figures['init_ms']['max']:.2f} |"
        )
    cost_path = os.path.join(target, "bench", "cost.json")
    if os.path.exists(cost_path):
        with open(cost_path) as f:
            cost = json.load(f)
        lines += [
            "",
            "## What a request costs",
            "",
            "Every AWS call of one access request (one source) and one erasure (five holders: four",
            "over RabbitMQ, one vendor API), from the submission to its end, counted by the",
            "function that made it (`calls::what_an_access_request_and_an_erasure_cost_in_aws_calls`,",
            "the SDK's HTTP client wrapped in the local stack: `infra/local/src/call_count.rs`),",
            "priced at on-demand us-east-1 list prices. Not in it: the sweep and the dispatch",
            "function's search for due messages (a fixed cost per minute, whatever the traffic),",
            "storage (reports expire after `ReportRetentionDays`), logs, metrics, the broker.",
            f"Lambda: one invocation per message at most, {ASSUMED_INVOCATION_MS} ms at 128 MB each.",
            "",
            "| request | AWS calls | DynamoDB | SQS | S3 | Scheduler | Lambda | API Gateway | per million requests |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for kind, figures in cost.items():
            dollars, invocations = price_of(figures["calls"])
            total = sum(dollars.values())
            lines.append(
                f"| {kind} | {figures['total']} (+ ≤ {invocations} invocations) | "
                + " | ".join(f"${dollars[s]:.2f}" for s in ("DynamoDB", "SQS", "S3", "Scheduler", "Lambda", "API Gateway"))
                + f" | **${total:.2f}** |"
            )
        lines += ["", "Calls by function and operation (calls, billed units):", ""]
        for kind, figures in cost.items():
            listed = "; ".join(
                f"{c['function']} {c['operation']} {c['calls']}"
                + (f" ({c['units']} units)" if c["units"] != c["calls"] else "")
                for c in figures["calls"]
            )
            lines.append(f"- {kind}: {listed}.")
    lines += [
        "",
        "## How the binaries are kept small and quick to start",
        "",
        "- Release profile (workspace `Cargo.toml`): fat LTO and one codegen unit (whole-program",
        "  inlining and dead-code removal across the SDK crates), `opt-level = \"z\"` (the intake",
        "  for arm64: 11.8 MB with thin LTO at `opt-level = 3`, 8.0 MB with fat LTO at \"s\", 5.45 MB",
        "  at \"z\" after the changes below), stripped.",
        "- Release builds compile out `debug` and `trace` events (`tracing`'s",
        "  `release_max_level_info`): the SDK's are many, about 0.1 MB of each function; a debug",
        "  build has them.",
        "- One set of trust roots: the system's (rustls-native-certs) for the SDK's client and",
        "  `reqwest` alike; `reqwest`'s embedded webpki roots took 70 KB of the functions that",
        "  call HTTP sources and vendors.",
        "  `panic` stays `unwind`: the runtime catches a panic in a handler and turns it into that",
        "  invocation's error; `abort` would kill the execution environment instead.",
        "- Each function is built alone (`cargo lambda build --release --arm64 --bin <function>`,",
        "  as `sam build` does), so it links only its own crate's features of the adapters: the",
        "  SDK clients it uses, no in-memory adapters, no schema validation, no local stack.",
        "- One TLS stack, rustls with ring, for the SDK, RabbitMQ and HTTP sources alike.",
        "- Inside Lambda the AWS configuration comes from Lambda's variables",
        "  (`dsr_adapters::config::aws_in_lambda`): no profile files read at init, and none of",
        "  the other credential providers (STS, SSO, IMDS, ECS) linked in.",
        "- Log lines through tracing-subscriber's `Targets` filter instead of `EnvFilter`, which",
        "  brings a regular-expression engine (`dsr_adapters::logging`).",
        "",
        "## Commands",
        "",
        "- `make bench`: all of the above, then this file. It runs `make package` for arm64 (the",
        "  sizes) and for x86_64 (the binaries this machine runs), then",
        "  `lambda-bench --binaries <target>/lambda-x86_64` (cold starts; the intake and the",
        "  peer alternating in rounds of 50 submissions on the same tables).",
        "- CPU time is every thread's (`/proc/<pid>/task/*/schedstat`); wall time is from the",
        "  moment the Runtime API hands an event out to the moment the answer arrives, as Lambda",
        "  bills it; peak RSS is the process's `VmHWM`.",
        "",
    ]
    with open(out, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
