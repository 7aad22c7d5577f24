"""Least privilege, read from template.yaml against what the code does.

- No wildcard resource (``*``, or an ARN ending in ``*``) in any policy, except where AWS
  takes no resource: :data:`NO_RESOURCE_ACTIONS` (with the reason), and KMS key policies, whose
  ``Resource: "*"`` means the key itself.
- Every action a function's role grants is one the function uses, on the resource it uses it
  on, and every call the function makes is granted. What a function uses is derived statically
  (``tests/unit/aws_calls.py``: a call graph from the handler module through the layer), plus
  what AWS does with the role on the function's behalf (:func:`_platform_needs`, each with the
  reason).
- The token key's policy lets no principal decrypt but the roles of the functions that open
  tokens (derived from the code), and grants ``kms:*`` only to the account in its one
  administration statement.

No SAM policy template (``DynamoDBCrudPolicy`` & co., which expand to actions the code does not
use) and no managed policy: every permission is an inline statement this test can read.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
from aws_lambda_powertools.utilities.idempotency.persistence import dynamodb as idempotency_ddb
from aws_lambda_powertools.utilities.parameters import ssm as powertools_ssm

from appauth_dev.stack import DEFAULT_TEMPLATE, SECRET_NAMES, load_template, plain_resources
from tests.unit.aws_calls import LIBRARY_CALLS, AwsCall, CallGraph, Program

TEMPLATE = load_template(DEFAULT_TEMPLATE)
RESOURCES = plain_resources(TEMPLATE)

# Actions that take no resource-level permission: AWS requires Resource "*" for them.
NO_RESOURCE_ACTIONS = {
    # X-Ray (Tracing: Active): trace segments belong to no resource.
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    # CloudWatch metrics have no ARN (the functions publish EMF through their logs instead).
    "cloudwatch:PutMetricData",
}
# Where each class's AWS calls go (a class of the layer, or a library type the code uses).
ORIGIN_RESOURCES = {
    "appauth.store.TokenStore": "TokensTable",
    "lib:DynamoDBPersistenceLayer": "IdempotencyTable",  # the redirect's idempotency records
    "appauth.envelope.TokenCipher": "TokenKey",
    "appauth.parking.GrantSink": "ParkedGrantsQueue",
    "appauth.parking.drain_parked": "ParkedGrantsQueue",
    "appauth.events.EventBridgePublisher": "EventBus",
    "lib:SSMProvider": "Parameters",
}
# Calls named like an AWS operation that are not AWS calls (the analysis cannot type them).
NOT_AWS_CALLS = {
    "appauth.alipay.signing.rsa_sign: key.sign",  # a cryptography private key
    "appauth.alipay.signing.rsa_verify: key.verify",  # a cryptography public key
    "appauth.envelope.TokenCipher.seal: aes.encrypt",  # AESGCM
    "appauth.envelope.TokenCipher.open: aes.decrypt",  # AESGCM
}
PARAMETER_NAMES = frozenset(SECRET_NAMES.values())


@dataclass(frozen=True, order=True)
class Grant:
    """One action on one resource (a template logical id, or a kind of resource), and the
    service it must go through (``kms:ViaService``), if any."""

    action: str
    resource: str
    via: str | None = None

    def __str__(self) -> str:
        return f"{self.action} on {self.resource}" + (f" via {self.via}" if self.via else "")


# --- the template --------------------------------------------------------------------------


def _functions() -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource["Properties"]
        for logical_id, resource in RESOURCES.items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


FUNCTIONS = _functions()


def _role_of(function: str) -> str:
    role = FUNCTIONS[function]["Role"]
    assert isinstance(role, dict)
    assert list(role) == ["Fn::GetAtt"], f"{function}: Role must be !GetAtt <a role here>.Arn"
    logical_id, attribute = role["Fn::GetAtt"]
    assert attribute == "Arn"
    return str(logical_id)


def _handler_module(function: str) -> str:
    return str(FUNCTIONS[function]["Handler"]).rsplit(".", 1)[0]


def _expand(statements: Any) -> Iterator[dict[str, Any]]:
    """Statements, with both branches of an ``Fn::If`` (``AWS::NoValue`` dropped)."""
    for statement in statements if isinstance(statements, list) else [statements]:
        if isinstance(statement, dict) and list(statement) == ["Fn::If"]:
            _, when_true, when_false = statement["Fn::If"]
            yield from _expand([when_true, when_false])
        elif statement != {"Ref": "AWS::NoValue"}:
            yield statement


def _listed(value: Any) -> list[Any]:
    if isinstance(value, dict) and list(value) == ["Fn::If"]:
        _, when_true, when_false = value["Fn::If"]
        return [*_listed(when_true), *_listed(when_false)]
    if value == {"Ref": "AWS::NoValue"}:
        return []
    return value if isinstance(value, list) else [value]


def _render(value: Any) -> str:
    """A resource as text: ``!Sub`` as written, ``!GetAtt X.Arn`` as ``${X.Arn}``, ``!Ref X`` as
    ``${X}``; enough to tell what it names and whether it ends in a wildcard."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((key, argument),) = value.items()
        if key == "Fn::Sub":
            return str(argument if isinstance(argument, str) else argument[0])
        if key == "Fn::GetAtt":
            logical_id, attribute = argument if isinstance(argument, list) else argument.split(".")
            return f"${{{logical_id}.{attribute}}}"
        if key == "Ref":
            return f"${{{argument}}}"
        if key == "Fn::Join":
            delimiter, items = argument
            return str(delimiter).join(_render(item) for item in items)
    raise AssertionError(f"a policy resource this test cannot read: {value!r}")


def _parameter_can_be_wildcard(text: str) -> bool:
    """``${Param}`` naming a template parameter that could be set to a wildcard."""
    match = re.fullmatch(r"\$\{([A-Za-z0-9]+)\}", text)
    if match is None or match.group(1) not in TEMPLATE.get("Parameters", {}):
        return False
    pattern = TEMPLATE["Parameters"][match.group(1)].get("AllowedPattern")
    samples = ("*", "arn:aws:kms:us-east-1:123456789012:key/*")
    return pattern is None or any(re.fullmatch(pattern, sample) for sample in samples)


def _is_wildcard(resource: Any) -> bool:
    text = _render(resource)
    return text.endswith("*") or _parameter_can_be_wildcard(text)


def _actions(statement: Mapping[str, Any]) -> set[str]:
    return {str(a) for a in _listed(statement["Action"])}


def _identity_policies() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, statement) of every identity policy: roles' inline policies, IAM policies."""
    for logical_id, resource in RESOURCES.items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                for statement in _expand(policy["PolicyDocument"]["Statement"]):
                    yield f"{logical_id}/{statement.get('Sid', '?')}", statement
        elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            for statement in _expand(props["PolicyDocument"]["Statement"]):
                yield f"{logical_id}/{statement.get('Sid', '?')}", statement


def _resource_policies() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(resource type, where, statement) of every resource policy in the template."""
    for logical_id, resource in RESOURCES.items():
        props = resource.get("Properties", {})
        document = props.get("KeyPolicy") or props.get("PolicyDocument")
        if document is None or resource["Type"].startswith("AWS::IAM::"):
            continue
        for statement in _expand(document["Statement"]):
            yield resource["Type"], f"{logical_id}/{statement.get('Sid', '?')}", statement


def _resource_key(resource: Any) -> str:
    """What a granted resource names: a logical id, ``Parameters/<name>`` (or ``/*``),
    ``EventBus``, ``AnyKey`` (every KMS key of the account), or ``*``."""
    text = _render(resource)
    if text == "*":
        return "*"
    owned = re.fullmatch(r"\$\{([A-Za-z0-9]+)\.Arn\}(/index/[A-Za-z0-9_-]+)?", text)
    if owned:
        return owned.group(1)
    parameter = re.fullmatch(r"arn:\$\{AWS::Partition\}:ssm:.*:parameter\$\{SsmPrefix\}/(.+)", text)
    if parameter:
        return f"Parameters/{parameter.group(1)}"
    if re.fullmatch(r"arn:\$\{AWS::Partition\}:events:.*:event-bus/\$\{EventBusName\}", text):
        return "EventBus"
    if re.fullmatch(r"arn:\$\{AWS::Partition\}:kms:.*:key/\*", text):
        return "AnyKey"
    reference = re.fullmatch(r"\$\{([A-Za-z0-9]+)\}", text)
    if reference and reference.group(1) in RESOURCES:  # e.g. a log group by its !Ref
        return reference.group(1)
    if reference and reference.group(1) in TEMPLATE.get("Parameters", {}):
        return f"Parameter:{reference.group(1)}"
    raise AssertionError(f"a policy resource this test does not know: {text}")


def _via(statement: Mapping[str, Any]) -> str | None:
    for operator in ("StringEquals", "StringLike"):
        value = statement.get("Condition", {}).get(operator, {}).get("kms:ViaService")
        if value is not None:
            text = _render(value)
            return text.split(".", 1)[0]
    return None


def _granted(role: str) -> dict[Grant, str]:
    """Every Allow of the role: grant -> the statement that grants it."""
    granted: dict[Grant, str] = {}
    for where, statement in _identity_policies():
        if not where.startswith(f"{role}/") or statement["Effect"] != "Allow":
            continue
        for action in _actions(statement):
            for resource in _listed(statement["Resource"]):
                granted[Grant(action, _resource_key(resource), _via(statement))] = where
    return granted


# --- what the code does --------------------------------------------------------------------


@cache
def _graph() -> CallGraph:
    return CallGraph(Program.of_the_project())


def _code_calls(function: str) -> set[AwsCall]:
    return _graph().calls(_handler_module(function))


def _code_needs(function: str) -> set[Grant]:
    needs: set[Grant] = set()
    module = _handler_module(function)
    for call in _code_calls(function):
        resource = ORIGIN_RESOURCES[call.origin]
        if resource == "Parameters":
            read = _graph().strings(module) & PARAMETER_NAMES
            needs.update(Grant(f"ssm:{call.operation}", f"Parameters/{name}") for name in read)
        else:
            needs.add(Grant(f"{call.service}:{call.operation}", resource))
    return needs


def _encryption_key(resource: str) -> str | None:
    """The logical id of the KMS key a table or queue of the template is encrypted with."""
    props = RESOURCES.get(resource, {}).get("Properties", {})
    key = props.get("SSESpecification", {}).get("KMSMasterKeyId") or props.get("KmsMasterKeyId")
    return _resource_key(key) if key is not None else None


def _platform_needs(function: str, code: set[Grant]) -> set[Grant]:
    """What AWS does with the function's role for it, each rule with its reason."""
    props = FUNCTIONS[function]
    needs: set[Grant] = set()
    # Lambda writes the function's logs with its role, to the log group the function names.
    log_group = _resource_key(props["LoggingConfig"]["LogGroup"])
    needs |= {Grant("logs:CreateLogStream", log_group), Grant("logs:PutLogEvents", log_group)}
    # Tracing: Active makes Lambda send trace segments with the role (a parameter may turn it
    # on: the grant is then conditional, and checked in the configuration that has it).
    tracing = props.get("Tracing", TEMPLATE.get("Globals", {}).get("Function", {}).get("Tracing"))
    if isinstance(tracing, dict) and list(tracing) == ["Ref"]:
        tracing = TEMPLATE["Parameters"][tracing["Ref"]].get("AllowedValues", [])
    if tracing == "Active" or (isinstance(tracing, list) and "Active" in tracing):
        needs |= {Grant("xray:PutTraceSegments", "*"), Grant("xray:PutTelemetryRecords", "*")}
    # An SQS event source: Lambda polls the queue with the role (AWS's documented three).
    for event in props.get("Events", {}).values():
        if event["Type"] == "SQS":
            queue = _resource_key(event["Properties"]["Queue"])
            for action in ("ReceiveMessage", "DeleteMessage", "GetQueueAttributes"):
                needs.add(Grant(f"sqs:{action}", queue))
    used = code | needs
    for grant in list(used):
        key = _encryption_key(grant.resource)
        if key is None:
            continue
        if grant.action.startswith("sqs:"):
            # SSE-KMS queues: sending needs a data key (GenerateDataKey) and may reuse one
            # (Decrypt); receiving needs Decrypt. SQS calls KMS with the caller's role.
            if grant.action == "sqs:SendMessage":
                needs |= {
                    Grant("kms:GenerateDataKey", key, "sqs"),
                    Grant("kms:Decrypt", key, "sqs"),
                }
            if grant.action == "sqs:ReceiveMessage":
                needs.add(Grant("kms:Decrypt", key, "sqs"))
        elif grant.action.startswith("dynamodb:"):
            # Tables under a customer managed key: which KMS calls DynamoDB makes with the
            # caller's role is AWS's choice, not the code's; the documented set for table use.
            for action in ("Decrypt", "Encrypt", "GenerateDataKey", "DescribeKey"):
                needs.add(Grant(f"kms:{action}", key, "dynamodb"))
    if any(g.action == "ssm:GetParameter" for g in code):
        # SecureStrings: SSM decrypts with the caller's role, under the parameter's key (the
        # AWS managed aws/ssm key needs no grant; a customer managed one does).
        needs.add(Grant("kms:Decrypt", "SecretsKey", "ssm"))
    return needs


def _needs(function: str) -> set[Grant]:
    code = _code_needs(function)
    return code | _platform_needs(function, code)


def _covered(grant: Grant, granted: Mapping[Grant, str]) -> bool:
    """Granted as such, or by a wider grant (which the wildcard test reports on its own)."""
    if grant in granted:
        return True
    if grant.resource.startswith("Parameters/"):
        return Grant(grant.action, "Parameters/*", grant.via) in granted
    # The AWS managed aws/ssm key needs no grant (its key policy lets the account's principals
    # decrypt through SSM), so a SecureString key grant is optional; when there is one, it
    # counts as used (see _used), and the wildcard test checks its resource.
    return grant.resource == "SecretsKey"


def _used(grant: Grant, needs: set[Grant]) -> bool:
    if grant in needs:
        return True
    if grant.resource == "Parameters/*":  # wide: used if any parameter is read
        return any(n.action == grant.action and n.resource.startswith("Parameters/") for n in needs)
    if grant.via == "ssm" and (
        grant.resource == "AnyKey" or grant.resource.startswith("Parameter:")
    ):
        return Grant(grant.action, "SecretsKey", "ssm") in needs
    return False


# --- the tests -----------------------------------------------------------------------------


def test_every_permission_is_an_inline_statement_this_test_reads():
    for function, props in FUNCTIONS.items():
        # SAM's policy templates (DynamoDBCrudPolicy, SQSPollerPolicy, ...) expand to actions
        # the code does not use; they belong on the role, spelled out.
        assert "Policies" not in props, function
        role = RESOURCES[_role_of(function)]
        assert role["Type"] == "AWS::IAM::Role"
        assert "ManagedPolicyArns" not in role["Properties"], function
    for where, statement in _identity_policies():
        assert statement["Effect"] in ("Allow", "Deny"), where
        assert "NotAction" not in statement, where
        assert "NotResource" not in statement, where
        assert not {a for a in _actions(statement) if "*" in a}, f"{where}: wildcard action"


def test_no_wildcard_resource_except_where_aws_requires_one():
    violations = []
    for where, statement in _identity_policies():
        wild = [_render(r) for r in _listed(statement["Resource"]) if _is_wildcard(r)]
        if wild and not _actions(statement) <= NO_RESOURCE_ACTIONS:
            violations.append(f"{where}: {', '.join(wild)} for {sorted(_actions(statement))}")
    for resource_type, where, statement in _resource_policies():
        resources = _listed(statement.get("Resource", []))
        if resource_type == "AWS::KMS::Key":
            # In a key policy "*" is the key itself, and the only form AWS accepts.
            assert resources == ["*"], where
            continue
        wild = [_render(r) for r in resources if _is_wildcard(r)]
        if wild:
            violations.append(f"{where}: {', '.join(wild)}")
    assert violations == [], "wildcard resources:\n" + "\n".join(violations)


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_every_granted_action_is_one_the_function_uses_and_every_call_is_granted(function: str):
    role = _role_of(function)
    granted = _granted(role)
    needs = _needs(function)
    unused = sorted(f"{g} ({where})" for g, where in granted.items() if not _used(g, needs))
    missing = sorted(str(g) for g in needs if not _covered(g, granted))
    assert (unused, missing) == ([], []), (
        f"{role}: granted but unused: {unused}; used but not granted: {missing}"
    )


def test_the_derivation_sees_every_aws_call_of_the_code():
    """What keeps the static derivation honest: every call named like an AWS operation is on a
    typed client (or known not to be AWS), every call maps to a resource, and the three handlers
    make the calls they are known to make (a derivation that found nothing would pass the
    test above vacuously)."""
    assert _graph().untyped_calls() <= NOT_AWS_CALLS, (
        "calls the analysis cannot type: annotate the client "
        f"{sorted(_graph().untyped_calls() - NOT_AWS_CALLS)}"
    )
    for function in FUNCTIONS:
        for call in _code_calls(function):
            assert call.origin in ORIGIN_RESOURCES, f"{call}: map its origin to a resource"
    by_function = {f: {f"{c.service}:{c.operation}" for c in _code_calls(f)} for f in FUNCTIONS}
    assert {"dynamodb:TransactWriteItems", "dynamodb:Scan"}.isdisjoint(
        set().union(*by_function.values())
    )  # transactions are counted as their items' actions; nothing scans
    assert "kms:Decrypt" not in by_function["CallbackFunction"]  # seals only
    assert "sqs:SendMessage" in by_function["CallbackFunction"]  # parks what the store refuses
    assert "dynamodb:Query" not in by_function["CallbackFunction"]  # events() is for tests
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage"} <= by_function["RefreshFunction"]
    assert not {a for a in by_function["TokenQueryFunction"] if a.startswith("sqs:")}
    assert "events:PutEvents" in set.intersection(*by_function.values())


def _client_calls(source: str, cls: str) -> set[str]:
    """The methods a library class calls on its boto3 client (``self.client.<op>(...)``)."""
    (node,) = [
        n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls
    ]
    return {
        call.func.attr
        for call in ast.walk(node)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and isinstance(call.func.value, ast.Attribute)
        and call.func.value.attr == "client"
    }


def test_the_library_calls_listed_are_what_the_libraries_do():
    assert _client_calls(inspect.getsource(powertools_ssm), "SSMProvider") >= set(
        LIBRARY_CALLS[("SSMProvider", "get")][1]
    )
    assert _client_calls(inspect.getsource(idempotency_ddb), "DynamoDBPersistenceLayer") == set(
        LIBRARY_CALLS[("DynamoDBPersistenceLayer", "__init__")][1]
    )


def _role_arn(role: str) -> str:
    name = _render(RESOURCES[role]["Properties"]["RoleName"])
    return f"arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:role/{name}"


def _token_key() -> str:
    """The key TokenCipher uses: the one the functions' TOKEN_KEY_ID names."""
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    return _resource_key(variables["TOKEN_KEY_ID"])


def test_only_the_roles_of_the_functions_that_open_tokens_may_decrypt_with_the_token_key():
    key = _token_key()
    openers = {
        function
        for function in FUNCTIONS
        if any(
            (c.service, c.operation, ORIGIN_RESOURCES[c.origin]) == ("kms", "Decrypt", key)
            for c in _code_calls(function)
        )
    }
    assert openers  # the derivation found who opens tokens
    opener_arns = sorted(_role_arn(_role_of(f)) for f in openers)
    statements = list(_expand(RESOURCES[key]["Properties"]["KeyPolicy"]["Statement"]))
    root = {"AWS": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}
    allows = [s for s in statements if s["Effect"] == "Allow"]
    # One Allow: the account administers the key (kms:* for the account root only: IAM decides
    # who in the account may use it, within the Deny below).
    assert len(allows) == 1, allows
    (admin,) = allows
    assert {k: _render(v) for k, v in admin["Principal"].items()} == root
    for statement in statements:
        if "kms:*" in _actions(statement) or "*" in _actions(statement):
            assert statement is admin, statement.get("Sid")
    # Decrypt (and ReEncryptFrom, a decrypt by another name) denied to every principal but
    # the openers' roles: an explicit Deny wins over any Allow, the root's kms:* included.
    denies = [
        s
        for s in statements
        if s["Effect"] == "Deny" and {"kms:Decrypt", "kms:ReEncryptFrom"} <= _actions(s)
    ]
    assert len(denies) == 1, "the key policy must deny kms:Decrypt to all but the openers"
    (deny,) = denies
    assert deny["Principal"] == {"AWS": "*"}
    assert _listed(deny["Resource"]) == ["*"]
    (condition,) = deny["Condition"].items()
    assert condition[0] == "ArnNotEquals"
    ((key_name, excepted),) = condition[1].items()
    assert key_name == "aws:PrincipalArn"
    assert sorted(_render(arn) for arn in _listed(excepted)) == opener_arns
    # ...and IAM grants kms:Decrypt on the token key to exactly those roles.
    decrypting = {
        role
        for role in (_role_of(f) for f in FUNCTIONS)
        if any(g.action == "kms:Decrypt" and g.resource == key for g in _granted(role))
    }
    assert decrypting == {_role_of(f) for f in openers}
