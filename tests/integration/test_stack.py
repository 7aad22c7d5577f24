"""The local stack is built from template.yaml, and only from it.

These tests compare what moto holds with what the template declares, prove that a change to the
template changes the tables (there is no second definition), and that the functions' environment
and secrets are what the deployed stack gives them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from appauth_dev.stack import (
    DEFAULT_TEMPLATE,
    PARKED_QUEUE,
    QUEUE_KEY,
    SECRET_NAMES,
    TemplateError,
    create_local_stack,
    environment_names,
    load_template,
    plain_resources,
    put_secrets,
)
from tests.conftest import read_vector_file
from tests.integration.conftest import REGION, LocalStackEnv

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TEMPLATE = load_template(DEFAULT_TEMPLATE)


def _dynamodb(endpoint: str) -> DynamoDBClient:
    client: DynamoDBClient = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)
    return client


def _tables(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource["Properties"]
        for logical_id, resource in plain_resources(template).items()
        if resource["Type"] == "AWS::DynamoDB::Table"
    }


def _write(template: dict[str, Any], tmp_path: Path) -> Path:
    # The long (JSON) form is valid YAML: this also exercises the loader on it.
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template), encoding="utf-8")
    return path


def _gsis(description: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {
        gsi["IndexName"]: (gsi["KeySchema"], gsi["Projection"])
        for gsi in description.get("GlobalSecondaryIndexes", [])
    }


def test_every_template_table_exists_in_moto_exactly_as_declared(local_stack: LocalStackEnv):
    dynamodb = _dynamodb(local_stack.endpoint_url)
    table_key_arn = local_stack.stack.table_key_id
    declared = _tables(TEMPLATE)
    assert set(declared) == {"TokensTable", "IdempotencyTable"}
    for logical_id, props in declared.items():
        name = local_stack.stack.resources[logical_id]
        assert name == f"appauth-local-{logical_id}"
        table = dynamodb.describe_table(TableName=name)["Table"]
        assert table["KeySchema"] == props["KeySchema"]
        assert sorted(table["AttributeDefinitions"], key=lambda d: d["AttributeName"]) == sorted(
            props["AttributeDefinitions"], key=lambda d: d["AttributeName"]
        )
        assert _gsis(dict(table)) == {
            gsi["IndexName"]: (gsi["KeySchema"], gsi["Projection"])
            for gsi in props.get("GlobalSecondaryIndexes", [])
        }
        assert table["BillingModeSummary"]["BillingMode"] == props["BillingMode"]
        assert table["DeletionProtectionEnabled"] is True
        assert table["SSEDescription"]["SSEType"] == "KMS"
        assert table["SSEDescription"]["KMSMasterKeyArn"] == table_key_arn
        ttl = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        assert ttl["TimeToLiveStatus"] == "ENABLED"
        assert ttl["AttributeName"] == props["TimeToLiveSpecification"]["AttributeName"]
        backups = dynamodb.describe_continuous_backups(TableName=name)
        pitr = backups["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]
        assert pitr["PointInTimeRecoveryStatus"] == "ENABLED"


def test_tokens_table_has_the_sparse_due_index_and_ttls(local_stack: LocalStackEnv):
    """What the token store relies on, spelled out (not only compared with the template)."""
    dynamodb = _dynamodb(local_stack.endpoint_url)
    tokens = dynamodb.describe_table(TableName=local_stack.stack.tokens_table)["Table"]
    assert tokens["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    gsis = _gsis(dict(tokens))
    assert set(gsis) == {"due", "verify", "status", "user"}
    sweep_projection = {
        "ProjectionType": "INCLUDE",
        "NonKeyAttributes": ["auth_app_id", "version", "status"],
    }
    assert gsis["due"] == (
        [
            {"AttributeName": "due_shard", "KeyType": "HASH"},
            {"AttributeName": "next_refresh_at", "KeyType": "RANGE"},
        ],
        sweep_projection,
    )
    assert gsis["verify"] == (
        [
            {"AttributeName": "due_shard", "KeyType": "HASH"},
            {"AttributeName": "verify_at", "KeyType": "RANGE"},
        ],
        sweep_projection,
    )
    for name, hash_key in (("status", "status"), ("user", "user_id")):
        keys, projection = gsis[name]
        assert keys == [
            {"AttributeName": hash_key, "KeyType": "HASH"},
            {"AttributeName": "auth_app_id", "KeyType": "RANGE"},
        ]
        # The listing indexes never carry a sealed token.
        assert projection["ProjectionType"] == "INCLUDE"
        assert not {"tokens", "previous_tokens"} & set(projection["NonKeyAttributes"])
    types = {d["AttributeName"]: d["AttributeType"] for d in tokens["AttributeDefinitions"]}
    assert types == {
        "pk": "S",
        "sk": "S",
        "due_shard": "S",
        "next_refresh_at": "N",
        "verify_at": "N",
        "status": "S",
        "user_id": "S",
        "auth_app_id": "S",
    }
    ttl = dynamodb.describe_time_to_live(TableName=local_stack.stack.tokens_table)
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "ttl"
    idempotency = local_stack.stack.idempotency_table
    assert dynamodb.describe_table(TableName=idempotency)["Table"]["KeySchema"] == [
        {"AttributeName": "id", "KeyType": "HASH"}
    ]
    ttl = dynamodb.describe_time_to_live(TableName=idempotency)
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "expiration"


def test_keys_aliases_and_queue_follow_the_template(local_stack: LocalStackEnv):
    kms = boto3.client("kms", region_name=REGION, endpoint_url=local_stack.endpoint_url)
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=local_stack.endpoint_url)
    stack = local_stack.stack
    queue_key = stack.resources[QUEUE_KEY]
    for key in (stack.token_key_id, stack.table_key_id, queue_key):
        assert kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is True
        policy = json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
        assert policy["Statement"][0]["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"}
        assert policy["Statement"][0]["Action"] == "kms:*"
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]}
    assert stack.token_key_id.endswith(str(aliases["alias/appauth-local-tokens"]))
    assert stack.table_key_id.endswith(str(aliases["alias/appauth-local-tables"]))
    assert queue_key.endswith(str(aliases["alias/appauth-local-queues"]))
    attributes = sqs.get_queue_attributes(QueueUrl=stack.parked_queue_url, AttributeNames=["All"])
    assert attributes["Attributes"]["MessageRetentionPeriod"] == "1209600"
    # At least the refresh function's timeout: the queue is that function's event source.
    refresh_timeout = TEMPLATE["Resources"]["RefreshFunction"]["Properties"]["Timeout"]
    assert int(attributes["Attributes"]["VisibilityTimeout"]) >= refresh_timeout


def test_both_queues_are_encrypted_with_the_local_queue_key(local_stack: LocalStackEnv):
    """SSE-KMS under QueueKey (not SSE-SQS): the template's !GetAtt resolves to the local key."""
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=local_stack.endpoint_url)
    stack = local_stack.stack
    queue_key = stack.resources[QUEUE_KEY]
    assert queue_key.startswith("arn:aws:kms:us-east-1:123456789012:key/")
    queues = {
        logical_id: resource["Properties"]
        for logical_id, resource in plain_resources(TEMPLATE).items()
        if resource["Type"] == "AWS::SQS::Queue"
    }
    assert set(queues) == {PARKED_QUEUE, "ParkedGrantsDeadLetterQueue"}
    for logical_id, props in queues.items():
        assert props["KmsMasterKeyId"] == {"Fn::GetAtt": [QUEUE_KEY, "Arn"]}
        assert "SqsManagedSseEnabled" not in props
        attributes = sqs.get_queue_attributes(
            QueueUrl=stack.resources[logical_id], AttributeNames=["All"]
        )["Attributes"]
        assert attributes["KmsMasterKeyId"] == queue_key
    dead_letter_arn = sqs.get_queue_attributes(
        QueueUrl=stack.resources["ParkedGrantsDeadLetterQueue"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    redrive = sqs.get_queue_attributes(
        QueueUrl=stack.parked_queue_url, AttributeNames=["RedrivePolicy"]
    )["Attributes"]["RedrivePolicy"]
    assert json.loads(redrive) == {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": 100}


# ---------------------------------------------------------------- IAM (read from the template:
# moto enforces neither IAM nor key policies, so the permissions are checked as declared)

FUNCTION_ROLES = {
    "CallbackFunction": "CallbackRole",
    "RefreshFunction": "RefreshRole",
    "TokenQueryFunction": "TokenQueryRole",
}


def _statements(role: str) -> dict[str, dict[str, Any]]:
    """The role's inline policy statements by Sid (one policy per role)."""
    (policy,) = TEMPLATE["Resources"][role]["Properties"]["Policies"]
    statements = [
        branch
        for statement in policy["PolicyDocument"]["Statement"]
        for branch in _branches(statement)
    ]
    by_sid = {statement["Sid"]: statement for statement in statements}
    assert len(by_sid) == len(statements)
    return by_sid


def _branches(statement: dict[str, Any]) -> list[dict[str, Any]]:
    """A conditional statement (Fn::If, e.g. X-Ray with Tracing on) counts with every grant it
    can make: the checks hold whichever way the condition goes."""
    if "Fn::If" not in statement:
        return [statement]
    _, when_true, when_false = statement["Fn::If"]
    return [branch for branch in (when_true, when_false) if branch != {"Ref": "AWS::NoValue"}]


def _actions(statement: dict[str, Any]) -> set[str]:
    action = statement["Action"]
    return {action} if isinstance(action, str) else set(action)


def _granted(role: str) -> set[str]:
    return {action for s in _statements(role).values() for action in _actions(s)}


def _role_arn(local_stack: LocalStackEnv, role: str) -> str:
    name = local_stack.stack.resolve(TEMPLATE["Resources"][role]["Properties"]["RoleName"])
    return f"arn:aws:iam::123456789012:role/{name}"


def test_every_function_runs_as_its_own_role_from_the_template():
    for function, role in FUNCTION_ROLES.items():
        props = TEMPLATE["Resources"][function]["Properties"]
        assert props["Role"] == {"Fn::GetAtt": [role, "Arn"]}
        assert "Policies" not in props  # ignored by SAM next to Role: keep them on the role
        role_props = TEMPLATE["Resources"][role]["Properties"]
        (trust,) = role_props["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": "lambda.amazonaws.com"}
        assert trust["Action"] == "sts:AssumeRole"
        assert "ManagedPolicyArns" not in role_props
        # Logs only to the function's own group; X-Ray write only.
        statements = _statements(role)
        log_group = props["LoggingConfig"]["LogGroup"]["Ref"]
        assert statements["WriteOwnLogs"]["Resource"] == {"Fn::GetAtt": [log_group, "Arn"]}
        assert _actions(statements["WriteOwnLogs"]) == {"logs:CreateLogStream", "logs:PutLogEvents"}
        assert _actions(statements["WriteTraces"]) == {
            "xray:PutTraceSegments",
            "xray:PutTelemetryRecords",
        }


def test_callback_finishes_inside_the_http_api_integration_limit():
    """HTTP API waits 30 s for an integration: the callback must time out before it does."""
    assert TEMPLATE["Resources"]["CallbackFunction"]["Properties"]["Timeout"] == 29


def test_role_names_fit_iam_limits_for_long_stack_names():
    """RoleName is at most 64 characters; the naming leaves a stack name of 46 (longest region 14)."""
    for role in FUNCTION_ROLES.values():
        name = TEMPLATE["Resources"][role]["Properties"]["RoleName"]["Fn::Sub"]
        longest = name.replace("${AWS::StackName}", "s" * 46).replace(
            "${AWS::Region}", "ap-southeast-4"
        )
        assert len(longest) <= 64, (role, len(longest))
        assert "${AWS::Region}" in name  # IAM is global: one stack name in two regions


def test_only_refresh_and_token_query_roles_may_decrypt_tokens(local_stack: LocalStackEnv):
    kms = boto3.client("kms", region_name=REGION, endpoint_url=local_stack.endpoint_url)
    policy = json.loads(
        kms.get_key_policy(KeyId=local_stack.stack.token_key_id, PolicyName="default")["Policy"]
    )
    administers, deny = policy["Statement"]
    assert administers["Effect"] == "Allow"
    assert administers["Action"] == "kms:*"
    assert deny["Effect"] == "Deny"
    assert deny["Principal"] == {"AWS": "*"}
    # Decrypt (and its equivalent ReEncryptFrom) only: administration stays with the account.
    assert set(deny["Action"]) == {"kms:Decrypt", "kms:ReEncryptFrom"}
    excepted = deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]
    assert sorted(excepted) == sorted(
        [_role_arn(local_stack, "RefreshRole"), _role_arn(local_stack, "TokenQueryRole")]
    )
    assert _role_arn(local_stack, "CallbackRole") not in excepted
    # ...and the roles that are excepted are the ones granted kms:Decrypt on TokenKey.
    token_key = {"Fn::GetAtt": ["TokenKey", "Arn"]}
    decrypting = {
        role
        for role in FUNCTION_ROLES.values()
        for s in _statements(role).values()
        if s["Resource"] == token_key and "kms:Decrypt" in _actions(s)
    }
    assert decrypting == {"RefreshRole", "TokenQueryRole"}


def test_function_permissions_are_the_ones_the_code_uses():
    callback, refresh, token_query = (_granted(role) for role in FUNCTION_ROLES.values())
    bus = {
        "Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/${EventBusName}"
    }
    # All three make transitions (the token query on a confirmed report_invalid).
    for role in ("CallbackRole", "RefreshRole", "TokenQueryRole"):
        assert _statements(role)["PublishLifecycleEvents"]["Resource"] == bus
    events = {a for a in callback | refresh | token_query if a.startswith("events:")}
    assert events == {"events:PutEvents"}
    for granted in (callback, refresh, token_query):
        assert "ssm:GetParameters" not in granted  # SSMProvider.get calls GetParameter
        assert not {a for a in granted if "*" in a}
    assert "dynamodb:Query" not in callback  # TokenStore.events() is for tests only
    assert _statements("RefreshRole")["QueryDueIndexes"]["Resource"] == [
        {"Fn::Sub": "${TokensTable.Arn}/index/due"},
        {"Fn::Sub": "${TokensTable.Arn}/index/verify"},
    ]
    assert _statements("TokenQueryRole")["QueryListIndexes"]["Resource"] == [
        {"Fn::Sub": "${TokensTable.Arn}/index/status"},
        {"Fn::Sub": "${TokensTable.Arn}/index/user"},
    ]
    assert _actions(_statements("CallbackRole")["IdempotencyRecords"]) == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    }
    assert token_query == {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "dynamodb:PutItem",
        "dynamodb:Query",
        "ssm:GetParameter",
        "kms:Decrypt",
        "kms:Encrypt",
        "kms:GenerateDataKey",
        "kms:DescribeKey",
        "events:PutEvents",
    }


def test_queue_key_use_is_through_sqs_only_and_matches_each_roles_queue_use():
    queue_key = {"Fn::GetAtt": [QUEUE_KEY, "Arn"]}
    via_sqs = {"kms:ViaService": {"Fn::Sub": "sqs.${AWS::Region}.amazonaws.com"}}
    expected = {
        # SendMessage to an SSE-KMS queue: GenerateDataKey and Decrypt.
        "CallbackRole": ({"sqs:SendMessage"}, {"kms:GenerateDataKey", "kms:Decrypt"}),
        # Producer and consumer.
        "RefreshRole": (
            # GetQueueAttributes: the SQS event source mapping on the parking queue.
            {
                "sqs:SendMessage",
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
            },
            {"kms:GenerateDataKey", "kms:Decrypt"},
        ),
        "TokenQueryRole": (set(), set()),
    }
    for role, (sqs_actions, kms_actions) in expected.items():
        statements = _statements(role).values()
        on_key = [s for s in statements if s["Resource"] == queue_key]
        on_queues = {a for s in statements for a in _actions(s) if a.startswith("sqs:")}
        assert on_queues == sqs_actions
        assert {a for s in on_key for a in _actions(s)} == kms_actions
        for statement in on_key:
            assert statement["Condition"] == {"StringEquals": via_sqs}


def test_changing_the_template_changes_the_tables(aws_env: str, tmp_path: Path):
    """There is no second definition: a GSI and a TTL change made in the template show up."""
    changed = load_template(DEFAULT_TEMPLATE)
    tokens = changed["Resources"]["TokensTable"]["Properties"]
    tokens["AttributeDefinitions"].append({"AttributeName": "merchant_ref", "AttributeType": "S"})
    tokens["GlobalSecondaryIndexes"].append(
        {
            "IndexName": "by_ref",
            "KeySchema": [{"AttributeName": "merchant_ref", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
        }
    )
    tokens["TimeToLiveSpecification"]["AttributeName"] = "expires_at"
    stack = create_local_stack(template=_write(changed, tmp_path), endpoint_url=aws_env)
    dynamodb = _dynamodb(aws_env)
    table = dynamodb.describe_table(TableName=stack.tokens_table)["Table"]
    gsis = _gsis(dict(table))
    assert set(gsis) == {"due", "verify", "status", "user", "by_ref"}
    assert gsis["by_ref"] == (
        [{"AttributeName": "merchant_ref", "KeyType": "HASH"}],
        {"ProjectionType": "KEYS_ONLY"},
    )
    ttl = dynamodb.describe_time_to_live(TableName=stack.tokens_table)
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "expires_at"


def test_a_new_table_in_the_template_is_created_under_the_stack_name(aws_env: str, tmp_path: Path):
    changed = load_template(DEFAULT_TEMPLATE)
    changed["Resources"]["AuditTable"] = {
        "Type": "AWS::DynamoDB::Table",
        "Properties": {
            "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
            "SSESpecification": {
                "SSEEnabled": True,
                "SSEType": "KMS",
                "KMSMasterKeyId": {"Fn::GetAtt": ["TableKey", "Arn"]},
            },
        },
    }
    stack = create_local_stack(
        template=_write(changed, tmp_path), endpoint_url=aws_env, stack_name="other"
    )
    assert stack.resources["AuditTable"] == "other-AuditTable"
    names = _dynamodb(aws_env).list_tables()["TableNames"]
    assert sorted(names) == ["other-AuditTable", "other-IdempotencyTable", "other-TokensTable"]


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        pytest.param((), {"ContributorInsightsSpecification": {"Enabled": True}}, id="table"),
        pytest.param(
            ("GlobalSecondaryIndexes", 0),
            {"OnDemandThroughput": {"MaxReadRequestUnits": 10}},
            id="gsi",
        ),
        pytest.param(("SSESpecification",), {"SSEKmsKeyRotation": True}, id="sse"),
    ],
)
def test_a_property_the_builder_cannot_translate_is_a_clear_error(
    aws_env: str, tmp_path: Path, path: tuple[Any, ...], extra: dict[str, Any]
):
    changed = load_template(DEFAULT_TEMPLATE)
    target: Any = changed["Resources"]["TokensTable"]["Properties"]
    for step in path:
        target = target[step]
    target.update(extra)
    (unknown,) = extra
    with pytest.raises(TemplateError, match=rf"TokensTable.*cannot translate {unknown}"):
        create_local_stack(template=_write(changed, tmp_path), endpoint_url=aws_env)
    # Checked before anything was created: nothing half-built is left behind.
    assert _dynamodb(aws_env).list_tables()["TableNames"] == []
    kms = boto3.client("kms", region_name=REGION, endpoint_url=aws_env)
    assert [a for a in kms.list_aliases()["Aliases"] if "appauth-local" in a["AliasName"]] == []


def test_environment_names_are_the_templates(local_stack: LocalStackEnv):
    declared = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert list(local_stack.env) == list(declared) == environment_names(TEMPLATE)
    assert set(environment_names(TEMPLATE, "CallbackFunction")) == set(declared)
    # The token query adds its cache's max age.
    assert set(environment_names(TEMPLATE, "TokenQueryFunction")) == set(declared) | {
        "TOKEN_CACHE_SECONDS"
    }
    # The refresh function adds its pool size and rate limit.
    assert set(environment_names(TEMPLATE, "RefreshFunction")) == set(declared) | {
        "REFRESH_CONCURRENCY",
        "REFRESH_RATE_PER_SECOND",
    }
    assert {name: os.environ[name] for name in declared} == local_stack.env
    stack = local_stack.stack
    assert local_stack.env == {
        "APP_ID": local_stack.app_id,
        "ALIPAY_ENV": "sandbox",
        "ALIPAY_GATEWAY_URL": "",
        "ALIPAY_V3_URL": "",
        "ALIPAY_AUTH_URL": "",
        "ALIPAY_PROTOCOL": "v2",
        "SSM_PREFIX": "/appauth/test",
        "SIGNING_MODE": "key",
        "TOKENS_TABLE": stack.tokens_table,
        "IDEMPOTENCY_TABLE": stack.idempotency_table,
        "TOKEN_KEY_ID": stack.token_key_id,
        "PARKED_QUEUE_URL": stack.parked_queue_url,
        "CALLBACK_URL": "",
        "REFRESH_AHEAD_DAYS": "30",
        "REFRESH_HYGIENE_DAYS": "90",
        "VERIFY_EVERY_DAYS": "7",
        "EVENT_BUS_NAME": "default",
        "POWERTOOLS_SERVICE_NAME": "appauth",
        "POWERTOOLS_METRICS_NAMESPACE": "AlipayAppAuth",
        "POWERTOOLS_PARAMETERS_MAX_AGE": "300",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        "POWERTOOLS_TRACE_DISABLED": "true",  # the Tracing parameter's default: Disabled
        "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
        "POWERTOOLS_TRACER_CAPTURE_ERROR": "true",
    }


def test_the_layer_accepts_the_environment_the_template_gives(local_stack: LocalStackEnv):
    from appauth.config import Settings  # noqa: PLC0415 - the layer's reader of these names

    settings = Settings.from_env()
    assert settings.tokens_table == local_stack.stack.tokens_table
    assert settings.token_key_id == local_stack.stack.token_key_id
    assert settings.ssm_prefix == local_stack.ssm_prefix
    assert settings.callback_url is None  # "" in the template = derived from the request


def test_environment_takes_template_parameters_and_enforces_allowed_values(
    local_stack: LocalStackEnv,
):
    stack = local_stack.stack
    env = stack.environment(
        "/x",
        "2021000100000001",
        "cert",
        AlipayGatewayUrl="http://127.0.0.1:8700/gateway.do",
        AlipayProtocol="v3",
        RefreshAheadDays="7",
    )
    assert env["ALIPAY_GATEWAY_URL"] == "http://127.0.0.1:8700/gateway.do"
    assert (env["SIGNING_MODE"], env["ALIPAY_PROTOCOL"], env["SSM_PREFIX"]) == ("cert", "v3", "/x")
    assert env["REFRESH_AHEAD_DAYS"] == "7"
    with pytest.raises(TemplateError, match="SigningMode"):
        stack.environment("/x", "1", "pem")
    with pytest.raises(TemplateError, match="no parameter Nope"):
        stack.environment("/x", "1", Nope="1")


def test_put_secrets_writes_decryptable_securestrings(aws_env: str, vectors: dict[str, Any]):
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=aws_env)
    private_key = read_vector_file(vectors["keys"]["app_private"])
    big_cert = "-----BEGIN CERTIFICATE-----\n" + "A" * 5000 + "\n-----END CERTIFICATE-----\n"
    names = put_secrets(
        ssm,
        "/appauth/cert",
        app_private_key=private_key,
        app_cert="app-cert",
        alipay_cert="alipay-cert",
        alipay_root_cert=big_cert,
        encrypt_key="aes-key",
        state_secret="state",
    )
    expected = {
        "app-private-key": private_key,
        "app-cert": "app-cert",
        "alipay-cert": "alipay-cert",
        "alipay-root-cert": big_cert,
        "encrypt-key": "aes-key",
        "state-secret": "state",
    }
    assert names == [f"/appauth/cert/{name}" for name in expected]
    stored = ssm.get_parameters_by_path(Path="/appauth/cert", WithDecryption=True)["Parameters"]
    assert {p["Name"].rsplit("/", 1)[1]: p["Value"] for p in stored} == expected
    assert {p["Type"] for p in stored} == {"SecureString"}
    tiers = {
        p["Name"].rsplit("/", 1)[1]: p.get("Tier") for p in ssm.describe_parameters()["Parameters"]
    }
    assert tiers["alipay-root-cert"] == "Advanced"
    assert tiers["app-private-key"] == "Standard"
    assert set(SECRET_NAMES.values()) - set(expected) == {"alipay-public-key"}


def test_local_stack_secrets_are_the_vector_keys(local_stack: LocalStackEnv, vectors):
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=local_stack.endpoint_url)
    keys = vectors["keys"]
    values = {
        p["Name"]: p["Value"]
        for p in ssm.get_parameters(Names=local_stack.parameter_names, WithDecryption=True)[
            "Parameters"
        ]
    }
    assert values == {
        "/appauth/test/app-private-key": read_vector_file(keys["app_private"]),
        "/appauth/test/alipay-public-key": read_vector_file(keys["alipay_public"]),
        "/appauth/test/state-secret": local_stack.state_secret,
    }


def test_refuses_to_run_without_a_local_endpoint(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with pytest.raises(TemplateError, match="refusing"):
        create_local_stack()


def test_loader_understands_cloudformation_short_tags(tmp_path: Path):
    path = tmp_path / "t.yaml"
    path.write_text(
        """
Conditions:
  IsProd: !Equals [!Ref Env, production]
  NotProd: !Not [!Condition IsProd]
Resources:
  R:
    Type: X
    Properties:
      A: !GetAtt Key.Arn
      B: !Sub "arn:${AWS::Partition}:x:${Key.Arn}"
      C: !Sub ["${a}-${!literal}", {a: !Ref Env}]
      D: !If [IsProd, !Join ["-", [a, b]], !Select [1, !Split [",", "x,y"]]]
      E: !FindInMap [M, !Ref Env, k]
""",
        encoding="utf-8",
    )
    template = load_template(path)
    props = template["Resources"]["R"]["Properties"]
    assert props["A"] == {"Fn::GetAtt": ["Key", "Arn"]}
    assert props["B"] == {"Fn::Sub": "arn:${AWS::Partition}:x:${Key.Arn}"}
    assert props["C"] == {"Fn::Sub": ["${a}-${!literal}", {"a": {"Ref": "Env"}}]}
    assert props["D"] == {
        "Fn::If": [
            "IsProd",
            {"Fn::Join": ["-", ["a", "b"]]},
            {"Fn::Select": [1, {"Fn::Split": [",", "x,y"]}]},
        ]
    }
    assert template["Conditions"]["NotProd"] == {"Fn::Not": [{"Condition": "IsProd"}]}
    assert props["E"] == {"Fn::FindInMap": ["M", {"Ref": "Env"}, "k"]}


def test_only_the_named_caller_roles_may_invoke_the_token_query():
    """One resource-based permission per role in TokenQueryCallerArns; no wildcard, no default."""
    parameter = TEMPLATE["Parameters"]["TokenQueryCallerArns"]
    assert parameter["Type"] == "CommaDelimitedList"
    assert "Default" not in parameter  # a deployer must name the callers
    assert "AWS::LanguageExtensions" in TEMPLATE["Transform"]
    loops = {k: v for k, v in TEMPLATE["Resources"].items() if k.startswith("Fn::ForEach::")}
    assert list(loops) == ["Fn::ForEach::TokenQueryCallers"]
    variable, collection, body = loops["Fn::ForEach::TokenQueryCallers"]
    assert collection == {"Ref": "TokenQueryCallerArns"}
    ((logical_id, permission),) = body.items()
    assert logical_id == f"TokenQueryInvokedBy&{{{variable}}}"
    assert permission["Type"] == "AWS::Lambda::Permission"
    assert permission["Properties"] == {
        "FunctionName": {"Fn::GetAtt": ["TokenQueryFunction", "Arn"]},
        "Action": "lambda:InvokeFunction",
        "Principal": {"Ref": variable},
    }
    # Nothing else grants an invoke: no other permission, no HTTP route to the token query.
    others = [
        logical_id
        for logical_id, resource in plain_resources(TEMPLATE).items()
        if resource["Type"] == "AWS::Lambda::Permission"
    ]
    assert others == []
    assert "Events" not in TEMPLATE["Resources"]["TokenQueryFunction"]["Properties"]
