"""What 1,000 answers cost on AWS, from the counts and durations a benchmark run measured.

Prices are AWS's public on-demand list prices for us-east-1 (the figures on the service
pricing pages: Lambda, SQS, DynamoDB on-demand after its 2024-11-01 reduction, API Gateway
HTTP APIs, data transfer out; for the Redis path ElastiCache Serverless for Valkey and the
VPC's NAT gateway), as recorded in PRICES_AS_OF. Free tiers are left out (they
make small volumes free and would hide the per-answer cost); the model's own price is left
out too (it does not depend on this pipeline). Update the table when AWS changes a price.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PRICES_AS_OF = "2026-11-21"
PRICES_USD = {
    "lambda_arm64_gb_second": 0.0000133334,  # first 7.5 billion GB-s a month
    "lambda_request": 0.20 / 1e6,
    "lambda_streamed_gb_over_6mb": 0.008,  # response streaming, beyond 6 MB per request
    # SnapStart (Python): the snapshot cached per version while active, and each restore,
    # both by the function's MemorySize.
    "lambda_snapstart_cache_gb_second": 0.0000015046,
    "lambda_snapstart_restore_gb": 0.0001397998,
    "sqs_standard_request": 0.40 / 1e6,  # per 64 KB chunk of a request
    "dynamodb_write_request_unit": 0.625 / 1e6,  # on-demand, item up to 1 KB
    "dynamodb_read_request_unit": 0.125 / 1e6,  # on-demand, strongly consistent, up to 4 KB
    "http_api_request": 1.00 / 1e6,  # API Gateway HTTP API, first 300 million a month
    "data_transfer_out_gb": 0.09,  # to the internet, first 10 TB a month
    # The Redis Streams chunk log: ElastiCache Serverless for Valkey, and the NAT gateway the
    # functions in its VPC reach SQS, DynamoDB, Secrets Manager and the model through.
    "elasticache_valkey_ecpu": 0.0023 / 1e6,
    "elasticache_valkey_gb_hour": 0.084,  # at least 100 MB is metered
    "nat_gateway_hour": 0.045,
    "nat_gateway_gb": 0.045,
}
HOURS_A_MONTH = 730


@dataclass(frozen=True)
class PerAnswer:
    """What one answer uses, as measured (means over a concurrency level's answers)."""

    api_seconds: float  # the HTTP function's time for POST /chat
    worker_seconds: float  # claim to terminal event
    stream_seconds: float  # the SSE response, open to close (Lambda bills the whole stream)
    memory_mb: dict[str, int]  # per function, from template.yaml
    stream_connections: float  # SSE responses (function URL invocations) per answer
    dynamodb_write_units: float
    dynamodb_read_units: float
    sqs_requests: float
    bytes_out: float  # POST answer plus the SSE stream, to the client
    cache_ecpus: float = 0.0  # Redis commands (each moves under 1 KB: one ECPU)
    snapstart_mb: dict[str, int] = field(default_factory=dict)  # the functions with SnapStart


def cost_per_1000(use: PerAnswer) -> dict[str, Any]:
    p = PRICES_USD

    def gb_s(seconds: float, function: str) -> float:
        return seconds * use.memory_mb[function] / 1024

    items = {
        "lambda_duration": (
            gb_s(use.api_seconds, "api")
            + gb_s(use.worker_seconds, "worker")
            + gb_s(use.stream_seconds, "stream")
        )
        * p["lambda_arm64_gb_second"],
        "lambda_requests": (2 + use.stream_connections) * p["lambda_request"],
        "http_api": p["http_api_request"],
        "sqs": use.sqs_requests * p["sqs_standard_request"],
        "dynamodb_writes": use.dynamodb_write_units * p["dynamodb_write_request_unit"],
        "dynamodb_reads": use.dynamodb_read_units * p["dynamodb_read_request_unit"],
        "data_transfer_out": use.bytes_out / 1e9 * p["data_transfer_out_gb"],
    }
    fixed: dict[str, float] = {}
    if use.cache_ecpus:
        items["elasticache_ecpus"] = use.cache_ecpus * p["elasticache_valkey_ecpu"]
        # The answer's bytes pass the NAT gateway once more on their way in from the model.
        items["nat_gateway_data"] = use.bytes_out / 1e9 * p["nat_gateway_gb"]
        fixed = {
            "elasticache_minimum_storage": 0.1 * p["elasticache_valkey_gb_hour"] * HOURS_A_MONTH,
            "nat_gateway_one_zone": p["nat_gateway_hour"] * HOURS_A_MONTH,
        }
    for fn, mb in use.snapstart_mb.items():
        # one cached version per function (the alias's), all month
        fixed[f"snapstart_cache_{fn}"] = (
            mb / 1024 * p["lambda_snapstart_cache_gb_second"] * HOURS_A_MONTH * 3600
        )
    per_1000 = {k: round(v * 1000, 5) for k, v in items.items()}
    return {
        "usd_per_1000_answers": round(sum(per_1000.values()), 4),
        "items_usd_per_1000": per_1000,
        # Paid whether answers come or not (the Redis path only): USD a month.
        "fixed_usd_per_month": {k: round(v, 2) for k, v in fixed.items()},
        # What a cold start adds: the restore of a SnapStart function; else its init, billed
        # as duration (not measured on Lambda here, so left out).
        "usd_per_restore": {
            fn: round(mb / 1024 * p["lambda_snapstart_restore_gb"], 9)
            for fn, mb in use.snapstart_mb.items()
        },
        "per_answer": asdict(use),
        "prices_usd": PRICES_USD,
        "prices_as_of": PRICES_AS_OF,
        "region": "us-east-1",
        "excluded": "the model's own price; free tiers; idle SQS long polls of the event "
        "source mapping (a fixed cost per queue, not per answer); storage (TTL expires it); "
        "on the Redis path, VPC endpoints in place of the NAT gateway's data charge",
    }
