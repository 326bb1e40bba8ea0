"""``python -m llmstream_deploy publish --stack NAME``: the steps after `sam deploy`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import boto3
from dotenv import dotenv_values

from llmstream_deploy.publish import invalidate, stack_outputs, store_openai_key, sync_frontend

ROOT = Path(__file__).resolve().parents[2]


def openai_key(dotenv: Path) -> str | None:
    """OPENAI_API_KEY from the environment, else from the ``.env`` file; the environment wins,
    as for `./run.sh start`. python-dotenv reads the file (quotes, comments, `export`, CRLF
    line ends) so that a deploy needs nothing of the local cloud (localcloud)."""
    if key := os.environ.get("OPENAI_API_KEY"):
        return key
    # Stripped like every value `./run.sh start` takes from the file: a quoted key keeps the
    # blanks inside its quotes, which no key has.
    return (dotenv_values(dotenv).get("OPENAI_API_KEY") or "").strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmstream_deploy")
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="frontend to S3, config.json, CloudFront invalidation")
    pub.add_argument("--stack", required=True)
    pub.add_argument("--directory", default=str(ROOT / "frontend"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log = logging.getLogger("llmstream_deploy")

    outputs = stack_outputs(boto3.client("cloudformation"), args.stack)
    key = openai_key(ROOT / ".env")
    if key and outputs.openai_secret_arn:
        store_openai_key(boto3.client("secretsmanager"), outputs.openai_secret_arn, key)
        log.info("stored OPENAI_API_KEY in %s", outputs.openai_secret_arn)
    elif outputs.openai_secret_arn:
        log.info("OPENAI_API_KEY not set: the secret %s keeps its value", outputs.openai_secret_arn)
    sync_frontend(boto3.client("s3"), outputs.bucket, Path(args.directory), outputs.config())
    if outputs.distribution_id:
        inval = invalidate(boto3.client("cloudfront"), outputs.distribution_id)
        log.info("CloudFront invalidation %s started", inval)
    log.info("chat page: %s", outputs.frontend_url)
    log.info("api:       %s", outputs.api_url)
    log.info("stream:    %s", outputs.stream_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
