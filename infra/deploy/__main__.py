"""``python -m llmstream_deploy publish|origin --stack NAME``: the steps after `sam deploy`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import boto3
from dotenv import dotenv_values

from llmstream_deploy.origin import named_by_deployer, pin_origin
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
    org = sub.add_parser("origin", help="AllowedOrigin: the chat page's URL, unless named")
    org.add_argument("--stack", required=True)
    org.add_argument("--config-env", default="default", help="samconfig.toml's environment")
    org.add_argument("--samconfig", default=str(ROOT / "samconfig.toml"))
    org.add_argument("sam_args", nargs="*", help="after --: the arguments sam deploy had")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command == "origin":
        return origin(args)
    return publish(args)


def origin(args: argparse.Namespace) -> int:
    log = logging.getLogger("llmstream_deploy")
    if named_by_deployer(Path(args.samconfig), args.config_env, args.sam_args):
        log.info("AllowedOrigin is named by the deploy's parameters: left as it is")
        return 0
    pinned = pin_origin(boto3.client("cloudformation"), args.stack)
    if pinned is None:
        log.info("AllowedOrigin: the stack's own (already the page's origin, or named before)")
    return 0


def publish(args: argparse.Namespace) -> int:
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
