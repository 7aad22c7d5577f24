"""Any payload another Lambda can invoke the token query with parses into a typed request or is
refused as a bad request (``InvalidRequestError``), never with another exception: the handler
turns any other one into an ``internal error`` answer, which tells the caller nothing useful.

Pure: ``appauth.queries.parse_request`` only (the integration fuzz in
tests/integration/test_fuzz_routes.py runs payloads through the handler against stored merchants).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from appauth.errors import InvalidRequestError
from appauth.queries import Describe, GetToken, ListAuthorizations, ReportInvalid, parse_request
from tests.integration.fuzz_helpers import fuzz_examples

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
_FIELDS = {
    "get_token": ("auth_app_id", "user_id", "required_methods", "consistent"),
    "describe": ("auth_app_id",),
    "list": ("status", "cursor", "limit"),
    "report_invalid": ("auth_app_id", "version"),
}
# Each action with every one of its own fields present or not, each of any JSON type.
_requests = st.sampled_from(sorted(_FIELDS)).flatmap(
    lambda action: st.fixed_dictionaries(
        {"action": st.just(action)}, optional=dict.fromkeys(_FIELDS[action], _json)
    )
)


@pytest.mark.parametrize("field", ["status", "cursor", "limit"])
@pytest.mark.parametrize("value", [[], ["granted"], {}, {"granted": 1}], ids=repr)
def test_a_list_request_with_a_field_of_the_wrong_type_is_a_bad_request(field: str, value: Any):
    """``{"action": "list", "status": []}`` raised TypeError (an unhashable status looked up in
    a set), which the handler answered as an internal error."""
    with pytest.raises(InvalidRequestError):
        parse_request({"action": "list", field: value})


@settings(max_examples=fuzz_examples(600), derandomize=True, database=None, deadline=None)
@example({"action": "list", "status": []})
@example({"action": "get_token", "auth_app_id": "2021000100000001", "required_methods": [[]]})
@given(event=_requests | _json)
def test_any_payload_parses_or_is_a_bad_request(event: Any):
    refusal: InvalidRequestError | None = None
    try:
        request = parse_request(event)
    except InvalidRequestError as error:
        refusal = error
    if refusal is not None:
        assert 0 < len(str(refusal)) < 300
        return
    assert isinstance(request, GetToken | Describe | ListAuthorizations | ReportInvalid)
