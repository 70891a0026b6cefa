"""Schemathesis hooks for tests/test_contract.py (loaded by its CLI through SCHEMATHESIS_HOOKS).

Three refusals depend on state a JSON Schema cannot see, so /openapi.json states them in words
and a schema-valid request may meet them: they are the only failures dropped, each recognised by
the service's own error body, and only as "schema-valid request rejected" (ST202) with a 400.

- `unknown_currency`: a deposit in a currency outside CURRENCY_DECIMALS the books do not hold;
- an amount that rounds to 0, or past 10^18 minor units, in its currency's decimals: the
  decimals are the currency's, not the schema's;
- a `cursor` the service did not hand out (an opaque `next_cursor`).

Every other failure fails the test.
"""

import json
import sys

import schemathesis

# CPython 3.11 before 3.11.8 raises SystemError ("AST constructor recursion depth mismatch")
# when ast.parse runs out of stack deep in a call chain; hypothesis parses sources that way to
# describe its strategies, deep in schemathesis's generators. More room keeps it out of reach.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

CURRENCY_RULES = ("Rounds to 0 in ", "Too large: at most ")


def _messages(fields):
    """Every leaf message of a `fields` tree."""
    if isinstance(fields, dict):
        return [message for value in fields.values() for message in _messages(value)]
    if isinstance(fields, list):
        return [message for value in fields for message in _messages(value)]
    return [fields]


def stated_in_words(response):
    """Whether a 400 is one of the refusals the document can only state in words."""
    if response.status_code != 400:
        return False
    try:
        answer = json.loads(response.content)
    except ValueError:
        return False
    if answer.get("error") == "unknown_currency":
        return True
    messages = _messages(answer.get("fields"))
    if messages == ["Invalid cursor."]:
        return True
    return bool(messages) and all(str(message).startswith(CURRENCY_RULES) for message in messages)


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keep every failure but a 400 that refused a schema-valid request for a stated reason."""
    return not (failure.code == "ST202" and stated_in_words(response))
