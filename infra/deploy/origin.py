"""The stack's CORS origin once its chat page has a URL (`./run.sh deploy`, after publish).

The template's AllowedOrigin defaults to ``*``: on the first deploy the page's CloudFront URL
does not exist yet. Once it does (the FrontendUrl output), a stack still at ``*`` is updated
to allow that origin alone: the same template, every other parameter as it is. `sam deploy`
keeps a parameter it is not given at its previous value, so later deploys keep the origin
without being told. A deployer who names AllowedOrigin (samconfig.toml's
parameter_overrides, or `--parameter-overrides` on the command line), ``*`` included, is
left alone.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARAMETER = "AllowedOrigin"
ANY_ORIGIN = "*"  # the template's default
# What `sam deploy` acknowledges (samconfig.toml's capabilities), and the SAM transform.
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"]


def named_by_deployer(samconfig: Path, config_env: str, sam_args: list[str]) -> bool:
    """True if the deploy names AllowedOrigin itself: in samconfig.toml's parameter
    overrides of ``config_env`` (its deploy or global section), or in ``sam_args``, the
    arguments given to `sam deploy`."""
    overrides: list[str] = list(sam_args)
    if samconfig.exists():
        env = tomllib.loads(samconfig.read_text()).get(config_env, {})
        for section in ("deploy", "global"):
            value = env.get(section, {}).get("parameters", {}).get("parameter_overrides", "")
            overrides.extend(value if isinstance(value, list) else [str(value)])
    return any(f"{PARAMETER}=" in text for text in overrides)


def pin_origin(cloudformation: Any, stack: str, *, wait: bool = True) -> str | None:
    """If ``stack`` allows any origin (``*``) and its page has a URL, update it to allow that
    URL alone; the origin set, or None if there was nothing to do."""
    described = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    parameters = {p["ParameterKey"]: p.get("ParameterValue") for p in described["Parameters"]}
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    origin = (outputs.get("FrontendUrl") or "").rstrip("/")
    if parameters.get(PARAMETER) != ANY_ORIGIN or not origin:
        return None
    cloudformation.update_stack(
        StackName=stack,
        UsePreviousTemplate=True,
        Parameters=[
            {"ParameterKey": key, "ParameterValue": origin}
            if key == PARAMETER
            else {"ParameterKey": key, "UsePreviousValue": True}
            for key in parameters
        ],
        Capabilities=CAPABILITIES,
    )
    log.info("stack %s: %s %s (was *); waiting for the update", stack, PARAMETER, origin)
    if wait:
        waiter = cloudformation.get_waiter("stack_update_complete")
        waiter.wait(StackName=stack, WaiterConfig={"Delay": 10, "MaxAttempts": 180})
    return origin
