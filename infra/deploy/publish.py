"""Publish the static frontend to the stack's bucket (a sync: stale objects are removed).

HTML and config.json are served ``no-cache`` (revalidated on every load, so a deploy shows at
once); other assets are cached for an hour. The CloudFront invalidation after a sync makes
the edge caches drop their copies too.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
}
NO_CACHE = "no-cache"
ASSET_CACHE = "public, max-age=3600"


def content_type(path: Path) -> str:
    return _CONTENT_TYPES.get(path.suffix.lower()) or (
        mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )


def cache_control(key: str) -> str:
    return NO_CACHE if key.endswith((".html", ".json")) or key.endswith("/") else ASSET_CACHE


@dataclass(frozen=True)
class StackOutputs:
    api_url: str
    stream_url: str
    bucket: str
    distribution_id: str | None
    frontend_url: str | None
    openai_secret_arn: str | None
    region: str
    # The stack's own user pool; absent when it trusts another issuer (AuthIssuer).
    user_pool_id: str | None
    user_pool_client_id: str | None

    @classmethod
    def of(cls, outputs: dict[str, str], region: str) -> StackOutputs:
        return cls(
            api_url=outputs["ApiUrl"].rstrip("/"),
            stream_url=outputs["StreamUrl"].rstrip("/"),
            bucket=outputs["FrontendBucketName"],
            distribution_id=outputs.get("FrontendDistributionId"),
            frontend_url=outputs.get("FrontendUrl"),
            openai_secret_arn=outputs.get("OpenAIApiKeySecretArn"),
            region=region,
            user_pool_id=outputs.get("UserPoolId"),
            user_pool_client_id=outputs.get("UserPoolClientId"),
        )

    def config(self) -> dict[str, Any]:
        """The page's config.json: where its API and stream live, and how to sign in (the
        user pool's app client, through Cognito's JSON endpoint of the stack's region).
        A stack that trusts another issuer has no pool: the page then has no sign-in."""
        config: dict[str, Any] = {"apiUrl": self.api_url, "streamUrl": self.stream_url}
        if self.user_pool_client_id:
            config["auth"] = {
                "region": self.region,
                "userPoolId": self.user_pool_id,
                "clientId": self.user_pool_client_id,
                "endpoint": f"https://cognito-idp.{self.region}.amazonaws.com/",
            }
        else:
            log.warning("no UserPoolClientId output (AuthIssuer set?): the page cannot sign in")
        return config


def stack_outputs(cloudformation: Any, stack: str) -> StackOutputs:
    described = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    # The stack's region: from its ARN (arn:aws:cloudformation:<region>:...), else the client's.
    arn = str(described.get("StackId", "")).split(":")
    region = arn[3] if len(arn) > 3 and arn[3] else cloudformation.meta.region_name
    return StackOutputs.of(
        {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}, region=region
    )


def sync_frontend(s3: Any, bucket: str, directory: Path, config: dict[str, Any]) -> list[str]:
    """Upload every file under ``directory`` and a generated config.json; delete the rest."""
    uploaded: list[str] = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        key = path.relative_to(directory).as_posix()
        if key == "config.json" or key.startswith("."):
            continue  # config.json is generated below; dotfiles are not served
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=path.read_bytes(),
            ContentType=content_type(path),
            CacheControl=cache_control(key),
        )
        uploaded.append(key)
    s3.put_object(
        Bucket=bucket,
        Key="config.json",
        Body=json.dumps(config, indent=2).encode(),
        ContentType=_CONTENT_TYPES[".json"],
        CacheControl=NO_CACHE,
    )
    uploaded.append("config.json")
    keep = set(uploaded)
    stale = [
        {"Key": obj["Key"]}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for obj in page.get("Contents", [])
        if obj["Key"] not in keep
    ]
    for start in range(0, len(stale), 1000):  # DeleteObjects takes at most 1,000 keys
        s3.delete_objects(Bucket=bucket, Delete={"Objects": stale[start : start + 1000]})
    log.info("published %d objects to s3://%s, removed %d", len(uploaded), bucket, len(stale))
    return uploaded


def invalidate(cloudfront: Any, distribution_id: str) -> str:
    answer = cloudfront.create_invalidation(
        DistributionId=distribution_id,
        InvalidationBatch={
            "Paths": {"Quantity": 1, "Items": ["/*"]},
            "CallerReference": f"llmstream-{time.time_ns()}",
        },
    )
    return str(answer["Invalidation"]["Id"])


def store_openai_key(secretsmanager: Any, secret_arn: str, key: str) -> None:
    secretsmanager.put_secret_value(SecretId=secret_arn, SecretString=key)
