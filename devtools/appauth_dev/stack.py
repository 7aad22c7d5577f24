"""The local stack: the data plane of ``template.yaml`` built on moto (or any AWS-compatible endpoint).

``template.yaml`` is the one source of truth. This module reads it (CloudFormation short tags
included) and creates, against the endpoint boto3 is pointed at, exactly what the functions use:

- every ``AWS::DynamoDB::Table`` with its key schema, attribute definitions, GSIs (projection
  included), billing mode, SSE, deletion protection, tags, TTL and point-in-time recovery;
- every ``AWS::KMS::Key`` (rotation, key policy) and ``AWS::KMS::Alias``;
- every ``AWS::SQS::Queue`` (retention, visibility, redrive policy, SSE-KMS), after the keys,
  so a ``KmsMasterKeyId`` of ``!Ref Key`` / ``!GetAtt Key.Arn`` names the local key.

IAM roles are not emulated: moto does not enforce key policies or IAM, so the template's
permissions are checked by reading the template (see ``tests/integration/test_stack.py``).

Nothing else (functions, API, alarms) is emulated: handlers are called in-process by the tests.
A property the builder cannot translate is an error (:class:`TemplateError`), never silently
dropped, so a table in tests cannot drift from the table that ``sam deploy`` creates.

:meth:`LocalStack.environment` gives the functions' environment variables, with the names read
from the template (``Globals.Function.Environment`` and the function's own) and the values
resolved locally.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import yaml
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_ssm import SSMClient

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"

# Logical ids of the resources the functions use (see template.yaml).
TOKENS_TABLE = "TokensTable"
IDEMPOTENCY_TABLE = "IdempotencyTable"
TOKEN_KEY = "TokenKey"  # noqa: S105 - a logical id, not a secret
TABLE_KEY = "TableKey"
PARKED_QUEUE = "ParkedGrantsQueue"
QUEUE_KEY = "QueueKey"

# SSM parameter names under the prefix (the operator creates them; see README).
SECRET_NAMES = {
    "app_private_key": "app-private-key",
    "alipay_public_key": "alipay-public-key",
    "app_cert": "app-cert",
    "alipay_cert": "alipay-cert",
    "alipay_root_cert": "alipay-root-cert",
    "encrypt_key": "encrypt-key",
    "state_secret": "state-secret",
}
STANDARD_TIER_LIMIT = 4096  # bytes; larger values need the Advanced tier


class TemplateError(Exception):
    """The template cannot be loaded, resolved or translated into the local stack."""


# ---------------------------------------------------------------------------- loading


class TemplateLoader(yaml.SafeLoader):
    """A YAML loader that turns CloudFormation short tags into their long (JSON) form."""


def _construct_tag(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:  # pragma: no cover - yaml has no other node kinds
        raise TemplateError(f"unsupported YAML node for !{tag_suffix}")
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        logical_id, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [logical_id, attribute]}
    return {f"Fn::{tag_suffix}": value}


TemplateLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path = DEFAULT_TEMPLATE) -> dict[str, Any]:
    """The template as a dict, short tags (``!Ref``, ``!Sub``, ``!GetAtt``...) in long form."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=TemplateLoader)  # noqa: S506 - SafeLoader subclass
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"cannot load {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise TemplateError(f"{path} is not a CloudFormation template (no Resources)")
    return data


def plain_resources(template: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The template's resources without the ``Fn::ForEach::`` loops (AWS::LanguageExtensions),
    which expand to resources that have nothing to build locally (Lambda permissions)."""
    return {
        logical_id: resource
        for logical_id, resource in template["Resources"].items()
        if not logical_id.startswith("Fn::ForEach::")
    }


def environment_names(template: Mapping[str, Any], function: str | None = None) -> list[str]:
    """The environment variable names the template gives its functions (Globals + ``function``)."""
    return list(_environment_spec(template, function))


def _environment_spec(template: Mapping[str, Any], function: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = dict(
        template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    )
    if function is not None:
        resource = template["Resources"].get(function)
        if resource is None or resource.get("Type") != "AWS::Serverless::Function":
            raise TemplateError(f"{function} is not an AWS::Serverless::Function in the template")
        spec.update(
            resource.get("Properties", {}).get("Environment", {}).get("Variables", {}) or {}
        )
    return spec


# ---------------------------------------------------------------------------- resolving

_SUB_VARIABLE = re.compile(r"\$\{([^}]+)\}")


@dataclass
class _Resolver:
    """Evaluates the intrinsic functions the local stack needs, and fails loudly on the rest."""

    template: Mapping[str, Any]
    parameters: Mapping[str, str]
    pseudo: Mapping[str, str]
    refs: dict[str, str] = field(default_factory=dict)
    attributes: dict[tuple[str, str], str] = field(default_factory=dict)
    # When checking before creating: a resource not created yet resolves to a placeholder.
    placeholders: bool = False

    def ref(self, name: str) -> str:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.refs:
            return self.refs[name]
        if self.placeholders and name in self.template["Resources"]:
            return f"<{name}>"
        if name in self.template.get("Parameters", {}):
            raise TemplateError(f"parameter {name} has no default: pass a value for it")
        raise TemplateError(
            f"cannot resolve Ref {name} locally (not a parameter or local resource)"
        )

    def get_att(self, logical_id: str, attribute: str) -> str:
        try:
            return self.attributes[(logical_id, attribute)]
        except KeyError:
            if self.placeholders and logical_id in self.template["Resources"]:
                return f"<{logical_id}.{attribute}>"
            raise TemplateError(f"cannot resolve {logical_id}.{attribute} locally") from None

    def condition(self, name: str) -> bool:
        conditions = self.template.get("Conditions", {})
        if name not in conditions:
            raise TemplateError(f"unknown condition {name}")
        return bool(self.resolve(conditions[name]))

    def resolve(self, value: Any) -> Any:  # noqa: PLR0912 - one branch per intrinsic
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), *_ = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::GetAtt":
                logical_id, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(logical_id, attribute)
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::Join":
                delimiter, items = arg
                return str(delimiter).join(str(item) for item in self.resolve(items))
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                delimiter, source = arg
                return str(self.resolve(source)).split(delimiter)
            if key == "Fn::If":
                name, when_true, when_false = arg
                return self.resolve(when_true if self.condition(name) else when_false)
            if key == "Fn::Equals":
                left, right = self.resolve(arg)
                return str(left) == str(right)
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(item) for item in arg)
            if key == "Fn::Or":
                return any(self.resolve(item) for item in arg)
            if key == "Fn::FindInMap":
                mapping, top, second = (str(self.resolve(item)) for item in arg)
                try:
                    return self.template["Mappings"][mapping][top][second]
                except KeyError:
                    raise TemplateError(f"no {mapping}.{top}.{second} in Mappings") from None
            if key.startswith("Fn::"):
                raise TemplateError(f"intrinsic function {key} is not supported by the local stack")
        return {name: self.resolve(item) for name, item in value.items()}

    def _sub(self, arg: Any) -> str:
        if isinstance(arg, list):
            text, local = arg
            variables = {name: str(self.resolve(item)) for name, item in local.items()}
        else:
            text, variables = arg, {}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return variables[name]
            if "." in name and not name.startswith("AWS::"):
                logical_id, attribute = name.split(".", 1)
                return self.get_att(logical_id, attribute)
            return str(self.ref(name))

        return _SUB_VARIABLE.sub(replace, str(text))


def _parameter_values(
    template: Mapping[str, Any], overrides: Mapping[str, str] | None
) -> dict[str, str]:
    declared: Mapping[str, Any] = template.get("Parameters", {})
    values = {name: str(spec["Default"]) for name, spec in declared.items() if "Default" in spec}
    for name, value in (overrides or {}).items():
        spec = declared.get(name)
        if spec is None:
            raise TemplateError(f"the template has no parameter {name}")
        allowed = spec.get("AllowedValues")
        if allowed is not None and str(value) not in {str(item) for item in allowed}:
            raise TemplateError(f"parameter {name}: {value!r} is not one of {allowed}")
        values[name] = str(value)
    return values


# ---------------------------------------------------------------------------- translating


def _check_keys(where: str, spec: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise TemplateError(
            f"{where}: cannot translate {', '.join(unknown)} to the local stack; "
            "teach devtools/appauth_dev/stack.py about it rather than dropping it"
        )


def _key_schema(where: str, schema: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for element in schema:
        _check_keys(f"{where}.KeySchema", element, ("AttributeName", "KeyType"))
    return [{"AttributeName": e["AttributeName"], "KeyType": e["KeyType"]} for e in schema]


def _projection(where: str, projection: dict[str, Any]) -> dict[str, Any]:
    _check_keys(f"{where}.Projection", projection, ("ProjectionType", "NonKeyAttributes"))
    result: dict[str, Any] = {"ProjectionType": projection.get("ProjectionType", "ALL")}
    if "NonKeyAttributes" in projection:
        result["NonKeyAttributes"] = list(projection["NonKeyAttributes"])
    return result


def _throughput(where: str, spec: dict[str, Any]) -> dict[str, int]:
    _check_keys(where, spec, ("ReadCapacityUnits", "WriteCapacityUnits"))
    return {
        "ReadCapacityUnits": int(spec["ReadCapacityUnits"]),
        "WriteCapacityUnits": int(spec["WriteCapacityUnits"]),
    }


def _index(where: str, spec: dict[str, Any], *, global_index: bool) -> dict[str, Any]:
    allowed = ["IndexName", "KeySchema", "Projection"]
    if global_index:
        allowed.append("ProvisionedThroughput")
    _check_keys(where, spec, allowed)
    index: dict[str, Any] = {
        "IndexName": spec["IndexName"],
        "KeySchema": _key_schema(where, spec["KeySchema"]),
        "Projection": _projection(where, spec.get("Projection", {})),
    }
    if "ProvisionedThroughput" in spec:
        index["ProvisionedThroughput"] = _throughput(
            f"{where}.ProvisionedThroughput", spec["ProvisionedThroughput"]
        )
    return index


@dataclass(frozen=True)
class _TablePlan:
    logical_id: str
    create: dict[str, Any]
    ttl: tuple[str, bool] | None  # (attribute name, enabled)
    point_in_time_recovery: bool


_TABLE_PROPERTIES = (
    "TableName",
    "AttributeDefinitions",
    "KeySchema",
    "GlobalSecondaryIndexes",
    "LocalSecondaryIndexes",
    "BillingMode",
    "ProvisionedThroughput",
    "SSESpecification",
    "TimeToLiveSpecification",
    "PointInTimeRecoverySpecification",
    "DeletionProtectionEnabled",
    "StreamSpecification",
    "TableClass",
    "Tags",
)


def _plan_table(logical_id: str, props: dict[str, Any], stack_name: str) -> _TablePlan:
    """CloudFormation ``AWS::DynamoDB::Table`` properties (resolved) -> CreateTable and friends."""
    where = f"{logical_id} (AWS::DynamoDB::Table)"
    _check_keys(where, props, _TABLE_PROPERTIES)
    for definition in props["AttributeDefinitions"]:
        _check_keys(f"{where}.AttributeDefinitions", definition, ("AttributeName", "AttributeType"))
    create: dict[str, Any] = {
        "TableName": props.get("TableName") or f"{stack_name}-{logical_id}",
        "AttributeDefinitions": [
            {"AttributeName": d["AttributeName"], "AttributeType": d["AttributeType"]}
            for d in props["AttributeDefinitions"]
        ],
        "KeySchema": _key_schema(where, props["KeySchema"]),
        "BillingMode": props.get("BillingMode", "PROVISIONED"),
    }
    if "ProvisionedThroughput" in props:
        create["ProvisionedThroughput"] = _throughput(
            f"{where}.ProvisionedThroughput", props["ProvisionedThroughput"]
        )
    if props.get("GlobalSecondaryIndexes"):
        create["GlobalSecondaryIndexes"] = [
            _index(f"{where}.GlobalSecondaryIndexes[{i}]", gsi, global_index=True)
            for i, gsi in enumerate(props["GlobalSecondaryIndexes"])
        ]
    if props.get("LocalSecondaryIndexes"):
        create["LocalSecondaryIndexes"] = [
            _index(f"{where}.LocalSecondaryIndexes[{i}]", lsi, global_index=False)
            for i, lsi in enumerate(props["LocalSecondaryIndexes"])
        ]
    if "SSESpecification" in props:
        sse = props["SSESpecification"]
        _check_keys(f"{where}.SSESpecification", sse, ("SSEEnabled", "SSEType", "KMSMasterKeyId"))
        spec: dict[str, Any] = {"Enabled": bool(sse.get("SSEEnabled", False))}
        if "SSEType" in sse:
            spec["SSEType"] = sse["SSEType"]
        if "KMSMasterKeyId" in sse:
            spec["KMSMasterKeyId"] = sse["KMSMasterKeyId"]
        create["SSESpecification"] = spec
    if "DeletionProtectionEnabled" in props:
        create["DeletionProtectionEnabled"] = bool(props["DeletionProtectionEnabled"])
    if "StreamSpecification" in props:
        stream = props["StreamSpecification"]
        _check_keys(f"{where}.StreamSpecification", stream, ("StreamViewType",))
        create["StreamSpecification"] = {
            "StreamEnabled": True,
            "StreamViewType": stream["StreamViewType"],
        }
    if "TableClass" in props:
        create["TableClass"] = props["TableClass"]
    if props.get("Tags"):
        create["Tags"] = [{"Key": t["Key"], "Value": str(t["Value"])} for t in props["Tags"]]
    ttl = None
    if "TimeToLiveSpecification" in props:
        ttl_spec = props["TimeToLiveSpecification"]
        _check_keys(f"{where}.TimeToLiveSpecification", ttl_spec, ("AttributeName", "Enabled"))
        ttl = (str(ttl_spec["AttributeName"]), bool(ttl_spec["Enabled"]))
    pitr = props.get("PointInTimeRecoverySpecification", {})
    _check_keys(f"{where}.PointInTimeRecoverySpecification", pitr, ("PointInTimeRecoveryEnabled",))
    return _TablePlan(logical_id, create, ttl, bool(pitr.get("PointInTimeRecoveryEnabled", False)))


_QUEUE_ATTRIBUTES = {
    "DelaySeconds": "DelaySeconds",
    "MaximumMessageSize": "MaximumMessageSize",
    "MessageRetentionPeriod": "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds": "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout": "VisibilityTimeout",
    "SqsManagedSseEnabled": "SqsManagedSseEnabled",
    "KmsMasterKeyId": "KmsMasterKeyId",
    "FifoQueue": "FifoQueue",
    "ContentBasedDeduplication": "ContentBasedDeduplication",
    "RedrivePolicy": "RedrivePolicy",
}


def _attribute_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value)  # RedrivePolicy: SQS takes it as a JSON string
    return str(value)


def _plan_queue(logical_id: str, props: dict[str, Any], stack_name: str) -> dict[str, Any]:
    _check_keys(f"{logical_id} (AWS::SQS::Queue)", props, ("QueueName", *_QUEUE_ATTRIBUTES))
    name = props.get("QueueName") or f"{stack_name}-{logical_id}"
    if props.get("FifoQueue") and not name.endswith(".fifo"):
        name += ".fifo"
    attributes = {
        _QUEUE_ATTRIBUTES[key]: _attribute_value(value)
        for key, value in props.items()
        if key in _QUEUE_ATTRIBUTES
    }
    return {"QueueName": name, "Attributes": attributes}


_KEY_PROPERTIES = (
    "Description",
    "EnableKeyRotation",
    "Enabled",
    "KeyPolicy",
    "KeySpec",
    "KeyUsage",
    "MultiRegion",
    "PendingWindowInDays",  # only matters when the key is deleted; nothing to emulate
    "RotationPeriodInDays",
    "Tags",
)


# ---------------------------------------------------------------------------- the stack


@dataclass
class LocalStack:
    """What :func:`create_local_stack` built: physical names and ids, and how to configure code."""

    template: dict[str, Any] = field(repr=False)
    stack_name: str
    region: str
    tokens_table: str
    idempotency_table: str
    token_key_id: str
    table_key_id: str
    parked_queue_url: str
    resources: dict[str, str]
    _resolver: _Resolver = field(repr=False)

    def environment(
        self,
        ssm_prefix: str,
        app_id: str,
        signing_mode: str = "key",
        *,
        function: str | None = None,
        **parameters: str,
    ) -> dict[str, str]:
        """The environment variables the template gives the functions, resolved locally.

        Names come from ``Globals.Function.Environment`` (plus ``function``'s own, when given);
        values from the template's expressions, with ``ssm_prefix``, ``app_id``,
        ``signing_mode`` and ``parameters`` (template parameter names, e.g.
        ``AlipayGatewayUrl="http://127.0.0.1:8700/gateway.do"``) as the parameter values and
        the local resources for ``!Ref``/``!GetAtt``. Parameters keep the template's defaults
        otherwise. ``AllowedValues`` are enforced; ``AllowedPattern`` is not (local URLs are
        plain http).
        """
        values = _parameter_values(
            self.template,
            {"SsmPrefix": ssm_prefix, "AppId": app_id, "SigningMode": signing_mode, **parameters},
        )
        resolver = _Resolver(
            self.template,
            values,
            self._resolver.pseudo,
            self._resolver.refs,
            self._resolver.attributes,
        )
        spec = _environment_spec(self.template, function)
        return {name: str(resolver.resolve(value)) for name, value in spec.items()}

    def resolve(self, value: Any) -> Any:
        """A template value (long form, as :func:`load_template` gives it) resolved locally: the
        stack name, region and account, the parameter defaults, and the local resources' ids."""
        return self._resolver.resolve(value)


def _client_factory(
    session: boto3.session.Session | None, region: str, endpoint_url: str | None
) -> Callable[[str], Any]:
    chosen = session or boto3.session.Session(region_name=region)

    def client(service: str) -> Any:
        return chosen.client(service, region_name=region, endpoint_url=endpoint_url)  # type: ignore[call-overload]

    return client


def _require_local_endpoint(endpoint_url: str | None) -> None:
    if endpoint_url or os.environ.get("AWS_ENDPOINT_URL"):
        return
    raise TemplateError(
        "refusing to build the local stack without an endpoint: pass endpoint_url or set "
        "AWS_ENDPOINT_URL (moto), or pass require_local_endpoint=False for in-process moto"
    )


@dataclass
class _Builder:
    """Creates one resource type at a time, recording physical ids for later ``!Ref``/``!GetAtt``."""

    resolver: _Resolver
    resources: dict[str, dict[str, Any]]
    stack_name: str
    kms: KMSClient
    sqs: SQSClient
    dynamodb: DynamoDBClient
    physical: dict[str, str] = field(default_factory=dict)

    def of_type(self, type_name: str) -> list[tuple[str, dict[str, Any]]]:
        return [
            (logical_id, resource.get("Properties", {}))
            for logical_id, resource in self.resources.items()
            if resource.get("Type") == type_name
        ]

    def check(self) -> None:
        """Translate everything (resources not created yet resolve to placeholders), so an
        untranslatable property fails before anything exists."""
        check = replace(self.resolver, placeholders=True)
        for logical_id, props in self.of_type("AWS::KMS::Key"):
            _check_keys(f"{logical_id} (AWS::KMS::Key)", check.resolve(props), _KEY_PROPERTIES)
        for logical_id, props in self.of_type("AWS::KMS::Alias"):
            where = f"{logical_id} (AWS::KMS::Alias)"
            _check_keys(where, check.resolve(props), ("AliasName", "TargetKeyId"))
        for logical_id, props in self.of_type("AWS::DynamoDB::Table"):
            _plan_table(logical_id, check.resolve(props), self.stack_name)
        for logical_id, props in self.of_type("AWS::SQS::Queue"):
            _plan_queue(logical_id, check.resolve(props), self.stack_name)

    def keys(self) -> None:
        for logical_id, raw in self.of_type("AWS::KMS::Key"):
            props = self.resolver.resolve(raw)
            request: dict[str, Any] = {
                "Description": props.get("Description", ""),
                "KeyUsage": props.get("KeyUsage", "ENCRYPT_DECRYPT"),
                "KeySpec": props.get("KeySpec", "SYMMETRIC_DEFAULT"),
                "MultiRegion": bool(props.get("MultiRegion", False)),
            }
            if "KeyPolicy" in props:
                request["Policy"] = json.dumps(props["KeyPolicy"])
            if props.get("Tags"):
                request["Tags"] = [
                    {"TagKey": t["Key"], "TagValue": str(t["Value"])} for t in props["Tags"]
                ]
            metadata = self.kms.create_key(**request)["KeyMetadata"]
            if props.get("EnableKeyRotation"):
                self.kms.enable_key_rotation(KeyId=metadata["KeyId"])
            if props.get("Enabled") is False:
                self.kms.disable_key(KeyId=metadata["KeyId"])
            self.resolver.refs[logical_id] = metadata["KeyId"]
            self.resolver.attributes[(logical_id, "Arn")] = metadata["Arn"]
            self.resolver.attributes[(logical_id, "KeyId")] = metadata["KeyId"]
            self.physical[logical_id] = metadata["Arn"]
        for logical_id, raw in self.of_type("AWS::KMS::Alias"):
            props = self.resolver.resolve(raw)
            self.kms.create_alias(AliasName=props["AliasName"], TargetKeyId=props["TargetKeyId"])
            self.resolver.refs[logical_id] = props["AliasName"]
            self.physical[logical_id] = props["AliasName"]

    def queues(self) -> None:
        for logical_id, raw in self.of_type("AWS::SQS::Queue"):
            request = _plan_queue(logical_id, self.resolver.resolve(raw), self.stack_name)
            url = self.sqs.create_queue(**request)["QueueUrl"]
            attributes = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            self.resolver.refs[logical_id] = url
            self.resolver.attributes[(logical_id, "Arn")] = attributes["Attributes"]["QueueArn"]
            self.resolver.attributes[(logical_id, "QueueName")] = request["QueueName"]
            self.resolver.attributes[(logical_id, "QueueUrl")] = url
            self.physical[logical_id] = url

    def tables(self) -> None:
        for logical_id, raw in self.of_type("AWS::DynamoDB::Table"):
            plan = _plan_table(logical_id, self.resolver.resolve(raw), self.stack_name)
            description = self.dynamodb.create_table(**plan.create)["TableDescription"]
            name = plan.create["TableName"]
            self.dynamodb.get_waiter("table_exists").wait(
                TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
            )
            if plan.ttl is not None:
                attribute_name, enabled = plan.ttl
                self.dynamodb.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={"AttributeName": attribute_name, "Enabled": enabled},
                )
            if plan.point_in_time_recovery:
                self.dynamodb.update_continuous_backups(
                    TableName=name,
                    PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
                )
            self.resolver.refs[logical_id] = name
            self.resolver.attributes[(logical_id, "Arn")] = description["TableArn"]
            if "LatestStreamArn" in description:
                self.resolver.attributes[(logical_id, "StreamArn")] = description["LatestStreamArn"]
            self.physical[logical_id] = name

    def required(self, logical_id: str) -> str:
        if logical_id not in self.physical:
            raise TemplateError(f"the template has no {logical_id}; the functions need it")
        return self.physical[logical_id]


def create_local_stack(
    *,
    template: Path = DEFAULT_TEMPLATE,
    region: str = "us-east-1",
    stack_name: str = "appauth-local",
    session: boto3.session.Session | None = None,
    endpoint_url: str | None = None,
    parameters: Mapping[str, str] | None = None,
    require_local_endpoint: bool = True,
) -> LocalStack:
    """Create the template's tables, KMS keys and queues against moto; see the module docstring.

    ``parameters`` override template parameter defaults. Everything is translated (and checked)
    before anything is created, so an untranslatable property raises :class:`TemplateError` and
    leaves nothing half-built. Without ``endpoint_url`` or ``AWS_ENDPOINT_URL`` it refuses to
    run (it must never create resources in a real account) unless ``require_local_endpoint`` is
    false (in-process ``moto.mock_aws``).
    """
    if require_local_endpoint:
        _require_local_endpoint(endpoint_url)
    data = load_template(template)
    client = _client_factory(session, region, endpoint_url)
    account: str = client("sts").get_caller_identity()["Account"]
    resolver = _Resolver(
        data,
        _parameter_values(data, parameters),
        {
            "AWS::StackName": stack_name,
            "AWS::Region": region,
            "AWS::AccountId": account,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        },
    )
    builder = _Builder(
        resolver=resolver,
        resources={
            logical_id: resource
            for logical_id, resource in plain_resources(data).items()
            if "Condition" not in resource or resolver.condition(resource["Condition"])
        },
        stack_name=stack_name,
        kms=client("kms"),
        sqs=client("sqs"),
        dynamodb=client("dynamodb"),
    )
    builder.check()
    builder.keys()  # first: tables and queues may name their keys
    builder.queues()
    builder.tables()
    return LocalStack(
        template=data,
        stack_name=stack_name,
        region=region,
        tokens_table=builder.required(TOKENS_TABLE),
        idempotency_table=builder.required(IDEMPOTENCY_TABLE),
        token_key_id=builder.required(TOKEN_KEY),
        table_key_id=builder.required(TABLE_KEY),
        parked_queue_url=builder.required(PARKED_QUEUE),
        resources=dict(builder.physical),
        _resolver=resolver,
    )


# ---------------------------------------------------------------------------- secrets


def put_secrets(
    ssm_client: SSMClient,
    prefix: str,
    *,
    app_private_key: str,
    alipay_public_key: str | None = None,
    app_cert: str | None = None,
    alipay_cert: str | None = None,
    alipay_root_cert: str | None = None,
    encrypt_key: str | None = None,
    state_secret: str,
    key_id: str | None = None,
) -> list[str]:
    """Write the service's secrets as SecureString parameters under ``prefix``; returns the names.

    ``None`` values are skipped (key mode needs ``alipay_public_key``, cert mode the three
    certificates). Values over 4 KB use the Advanced tier. ``key_id`` defaults to aws/ssm.
    """
    if not prefix.startswith("/") or prefix.endswith("/"):
        raise ValueError("prefix must start with '/' and not end with '/'")
    values = {
        "app_private_key": app_private_key,
        "alipay_public_key": alipay_public_key,
        "app_cert": app_cert,
        "alipay_cert": alipay_cert,
        "alipay_root_cert": alipay_root_cert,
        "encrypt_key": encrypt_key,
        "state_secret": state_secret,
    }
    written = []
    for argument, value in values.items():
        if value is None:
            continue
        name = f"{prefix}/{SECRET_NAMES[argument]}"
        request: dict[str, Any] = {
            "Name": name,
            "Value": value,
            "Type": "SecureString",
            "Overwrite": True,
            "Tier": "Advanced" if len(value.encode()) > STANDARD_TIER_LIMIT else "Standard",
        }
        if key_id is not None:
            request["KeyId"] = key_id
        ssm_client.put_parameter(**request)
        written.append(name)
    return written


# ---------------------------------------------------------------------------- moto


def start_moto_server(ip_address: str = "127.0.0.1") -> tuple[ThreadedMotoServer, str]:
    """Start moto's server on loopback on a free port; returns it (call ``stop()``) and its URL.

    The server binds port 0 itself, so the kernel picks a free port with no window in which
    another process could take it.
    """
    server = ThreadedMotoServer(ip_address=ip_address, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"
