"""template.yaml as the local cloud sees it: translated by samtranslator, names resolved.

Every local name, key, batch size and environment variable comes from here, so the local
stack and the deployed one cannot drift apart (issue #2, must-show 5).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
ACCOUNT = "123456789012"  # the emulators' default account
NO_VALUE: Any = object()  # what Ref AWS::NoValue resolves to: the property is absent
# samtranslator only checks CodeUri's form; the code itself is run from the source tree.
_PLACEHOLDER_CODE = "s3://localcloud/code.zip"


class _NoManagedPolicies:
    """samtranslator asks IAM for managed-policy ARNs; the template names none."""

    def load(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    name: str
    handler: str
    timeout: int
    memory: int
    environment: dict[str, str]
    snapstart: bool = False  # SnapStart on its published versions


@dataclass(frozen=True)
class EventSourceSpec:
    logical_id: str
    function: str
    queue: str  # logical id of the queue
    batch_size: int
    batching_window: int
    report_batch_item_failures: bool
    maximum_concurrency: int | None


@dataclass
class LocalTemplate:
    stack: str
    region: str
    parameters: dict[str, str]
    resources: dict[str, Any]
    # Values the emulator cannot give (a function URL, say), keyed "Logical.Attribute".
    overrides: dict[str, str] = field(default_factory=dict)
    queue_urls: dict[str, str] = field(default_factory=dict)
    conditions: dict[str, bool] = field(default_factory=dict)
    account: str = ACCOUNT

    # -------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        stack: str,
        *,
        parameters: dict[str, str] | None = None,
        region: str | None = None,
        path: Path = TEMPLATE,
    ) -> LocalTemplate:
        region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        document = yaml_parse(path.read_text())
        declared = document.get("Parameters", {})
        values = {k: str(v["Default"]) for k, v in declared.items() if "Default" in v}
        values.update(parameters or {})
        missing = sorted(set(declared) - set(values))
        if missing:
            raise ValueError(f"template parameters without a value: {', '.join(missing)}")
        translated = translate(document, values, region)
        tpl = cls(stack=stack, region=region, parameters=values, resources={})
        tpl.conditions = tpl._conditions(translated.get("Conditions", {}))
        # A resource whose Condition is false does not exist (CloudFormation skips it).
        tpl.resources = {
            k: v
            for k, v in translated["Resources"].items()
            if tpl.conditions.get(v.get("Condition", ""), True)
        }
        return tpl

    def _conditions(self, declared: dict[str, Any]) -> dict[str, bool]:
        done: dict[str, bool] = {}

        def value(name: str) -> bool:
            if name not in done:
                done[name] = self._condition(declared[name], value)
            return done[name]

        for name in declared:
            value(name)
        return done

    def _condition(self, expr: Any, named: Any) -> bool:
        ((fn, arg),) = expr.items()
        if fn == "Condition":
            return bool(named(arg))
        if fn == "Fn::Equals":
            a, b = (self.resolve(x) for x in arg)
            return str(a) == str(b)
        if fn == "Fn::Not":
            return not self._condition(arg[0], named)
        if fn == "Fn::And":
            return all(self._condition(x, named) for x in arg)
        if fn == "Fn::Or":
            return any(self._condition(x, named) for x in arg)
        raise ValueError(f"condition function {fn} is not supported locally")

    # -------------------------------------------------------------- queries
    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.resources.items() if v["Type"] == resource_type}

    def props(self, logical_id: str) -> dict[str, Any]:
        return dict(self.resources[logical_id].get("Properties", {}))

    def physical_name(self, logical_id: str) -> str:
        """The resource's name: its name property if the template sets one, else
        ``<stack>-<LogicalId>`` (CloudFormation's form, without the random suffix)."""
        kind = self.resources[logical_id]["Type"]
        prop = {
            "AWS::SQS::Queue": "QueueName",
            "AWS::DynamoDB::Table": "TableName",
            "AWS::S3::Bucket": "BucketName",
            "AWS::Lambda::Function": "FunctionName",
            "AWS::SecretsManager::Secret": "Name",
            "AWS::Cognito::UserPool": "UserPoolName",
        }.get(kind)
        explicit = self.props(logical_id).get(prop) if prop else None
        if explicit is not None:
            return str(self.resolve(explicit))
        name = f"{self.stack}-{logical_id}"
        return name.lower() if kind == "AWS::S3::Bucket" else name

    def functions(self) -> dict[str, FunctionSpec]:
        out = {}
        for logical_id, res in self.of_type("AWS::Lambda::Function").items():
            p = res["Properties"]
            env = p.get("Environment", {}).get("Variables", {})
            out[logical_id] = FunctionSpec(
                logical_id=logical_id,
                name=self.physical_name(logical_id),
                handler=p["Handler"],
                timeout=int(self.resolve(p.get("Timeout", 3))),
                memory=int(self.resolve(p.get("MemorySize", 128))),
                snapstart=self.resolve((p.get("SnapStart") or {}).get("ApplyOn"))
                == "PublishedVersions",
                environment={
                    k: str(value)
                    for k, v in env.items()
                    if (value := self.resolve(v)) is not NO_VALUE
                },
            )
        return out

    def event_sources(self) -> list[EventSourceSpec]:
        out = []
        for logical_id, res in self.of_type("AWS::Lambda::EventSourceMapping").items():
            p = res["Properties"]
            queue = p["EventSourceArn"]["Fn::GetAtt"][0]
            function = self.function_behind(p["FunctionName"]["Ref"])
            scaling = p.get("ScalingConfig") or {}
            out.append(
                EventSourceSpec(
                    logical_id=logical_id,
                    function=function,
                    queue=queue,
                    batch_size=int(p.get("BatchSize", 10)),
                    batching_window=int(p.get("MaximumBatchingWindowInSeconds", 0)),
                    report_batch_item_failures="ReportBatchItemFailures"
                    in p.get("FunctionResponseTypes", []),
                    maximum_concurrency=(
                        int(self.resolve(scaling["MaximumConcurrency"]))
                        if "MaximumConcurrency" in scaling
                        else None
                    ),
                )
            )
        return out

    def function_behind(self, logical_id: str) -> str:
        """The function a reference names: itself, or the function of an alias (SAM points
        event sources at the alias of AutoPublishAlias; locally every alias is the code as
        it is)."""
        res = self.resources.get(logical_id, {})
        if res.get("Type") == "AWS::Lambda::Alias":
            return self.function_behind(res["Properties"]["FunctionName"]["Ref"])
        return logical_id

    # -------------------------------------------------------------- intrinsics
    def resolve(self, value: Any) -> Any:
        """Resolve Ref, Fn::GetAtt, Fn::Sub, Fn::Join, Fn::Select and Fn::If to local values
        (AWS::NoValue: NO_VALUE, dropped from lists and objects)."""
        if isinstance(value, list):
            return [r for v in value if (r := self.resolve(v)) is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {k: r for k, v in value.items() if (r := self.resolve(v)) is not NO_VALUE}
        ((fn, arg),) = value.items()
        if fn == "Ref" and arg == "AWS::NoValue":
            return NO_VALUE
        if fn == "Fn::If":
            condition, then, otherwise = arg
            return self.resolve(then if self.conditions[condition] else otherwise)
        if fn == "Ref":
            return self._ref(arg)
        if fn == "Fn::GetAtt":
            logical, attr = arg if isinstance(arg, list) else arg.split(".", 1)
            return self._get_att(logical, attr)
        if fn == "Fn::Sub":
            text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
            return self._sub(text, {k: str(self.resolve(v)) for k, v in extra.items()})
        if fn == "Fn::Join":
            sep, parts = arg
            return sep.join(str(self.resolve(p)) for p in parts)
        if fn == "Fn::Select":
            index, items = arg
            return self.resolve(items)[int(index)]
        return {k: self.resolve(v) for k, v in value.items()}

    def _pseudo(self, name: str) -> str | None:
        return {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account,
            "AWS::StackName": self.stack,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }.get(name)

    def _ref(self, name: str) -> str:
        if (pseudo := self._pseudo(name)) is not None:
            return pseudo
        if name in self.parameters:
            return self.parameters[name]
        if f"{name}.Ref" in self.overrides:
            return self.overrides[f"{name}.Ref"]
        kind = self.resources[name]["Type"]
        if kind == "AWS::SQS::Queue":
            return self.queue_url(name)
        return self.physical_name(name)

    def _get_att(self, logical: str, attr: str) -> str:
        if f"{logical}.{attr}" in self.overrides:
            return self.overrides[f"{logical}.{attr}"]
        kind = self.resources[logical]["Type"]
        name = self.physical_name(logical)
        if kind == "AWS::SQS::Queue":
            if attr == "QueueUrl":
                return self.queue_url(logical)  # known once the queue is provisioned
            return {"Arn": f"arn:aws:sqs:{self.region}:{self.account}:{name}", "QueueName": name}[
                attr
            ]
        if kind == "AWS::DynamoDB::Table" and attr == "Arn":
            return f"arn:aws:dynamodb:{self.region}:{self.account}:table/{name}"
        if kind == "AWS::S3::Bucket" and attr == "Arn":
            return f"arn:aws:s3:::{name}"
        if kind == "AWS::Lambda::Function" and attr == "Arn":
            return f"arn:aws:lambda:{self.region}:{self.account}:function:{name}"
        raise KeyError(f"no local value for {logical}.{attr}: add it to overrides")

    def _sub(self, text: str, extra: dict[str, str]) -> str:
        out, rest = [], text
        while "${" in rest:
            before, _, after = rest.partition("${")
            name, _, rest = after.partition("}")
            out.append(before)
            if name in extra:
                out.append(extra[name])
            elif "." in name:
                out.append(self._get_att(*name.split(".", 1)))
            else:
                out.append(self._ref(name))
        out.append(rest)
        return "".join(out)

    def queue_url(self, logical_id: str) -> str:
        try:
            return self.queue_urls[logical_id]
        except KeyError:
            raise KeyError(f"queue {logical_id} is not provisioned yet") from None


def translate(
    document: dict[str, Any], parameters: dict[str, str], region: str = "us-east-1"
) -> dict[str, Any]:
    """The SAM template as plain CloudFormation, resource Metadata passed through (so the
    IaC scanner sees the suppressions on the resources SAM generates)."""
    # samtranslator finds the region through a boto3 session.
    os.environ.setdefault("AWS_DEFAULT_REGION", region)
    return transform(
        _with_placeholder_code(document),
        parameters,
        _NoManagedPolicies(),
        passthrough_metadata=True,
    )


def translate_file(path: Path = TEMPLATE) -> dict[str, Any]:
    document = yaml_parse(path.read_text())
    declared = document.get("Parameters", {})
    values = {k: str(v.get("Default", "placeholder")) for k, v in declared.items()}
    return translate(document, values)


def _with_placeholder_code(document: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(document)
    glob = doc.get("Globals", {}).get("Function", {})
    if "CodeUri" in glob:
        glob["CodeUri"] = _PLACEHOLDER_CODE
    for res in doc.get("Resources", {}).values():
        if res.get("Type") == "AWS::Serverless::Function" and "CodeUri" in res.get(
            "Properties", {}
        ):
            res["Properties"]["CodeUri"] = _PLACEHOLDER_CODE
    return doc
