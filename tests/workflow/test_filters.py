"""The crm import's filter: every seed rule refused with a message naming the place and the fix, and string
comparisons translated with Salesforce's escaping (checked by running them against the sandbox)."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from crmsync import filters
from crmsync.workflow import model
from crmsync.workflow.activities.crm_filter import escape_string, to_soql

from .conftest import Env

TYPES = {"Id": "id", "Email": "email", "LastName": "string", "NumberOfEmployees": "int", "Birthdate": "date",
         "LastModifiedDate": "datetime", "HasOptedOutOfEmail": "boolean", "AccountId": "reference"}

REFUSED = [
    ({"and": [{"field": "Email", "op": "is empty"}], "or": [{"field": "Email", "op": "is empty"}]},
     "filter", "AND and OR cannot be mixed on one level"),
    ({"and not": [{"field": "Email", "op": "is empty"}]}, "filter", "AND NOT is not supported"),
    ({"not": {"field": "Email", "op": "is empty"}}, "filter", "NOT is not supported"),
    ({"except": [{"field": "Email", "op": "is empty"}]}, "filter", "EXCEPT (AND NOT) is not supported"),
    ({"field": "Account.Name", "op": "=", "value": "Acme"}, "filter.field", "JOIN comparisons are not supported"),
    ({"field": "Email", "op": "=", "value_field": "LastName"}, "filter", "join comparison"),
    ({"field": "LOWER(Email)", "op": "=", "value": "a"}, "filter.field", "must be a single field"),
    ({"field": 42, "op": "=", "value": 42}, "filter.field", "not the constant 42"),
    ({"expression": "1 = 1"}, "filter", "must be a single field"),
    ({"and": [{"field": "Email", "op": "resembles", "value": "x"}]}, "filter.and[0].op", "unknown operator"),
    ({"field": "Email", "op": "=", "value": None}, "filter.value", "is empty"),
]


@pytest.mark.parametrize("tree, where, message", REFUSED)
def test_seed_rules_are_refused_with_the_place_and_the_fix(tree, where, message) -> None:
    with pytest.raises(filters.FilterError) as caught:
        filters.parse(tree)
    assert caught.value.path == where and message in str(caught.value)


TYPE_REFUSED = [
    ({"field": "NumberOfEmployees", "op": ">", "value": "many"}, "must be a number"),
    ({"field": "Birthdate", "op": "after", "value": "someday"}, "is not a date"),
    ({"field": "HasOptedOutOfEmail", "op": "=", "value": "yes"}, "must be true or false"),
    ({"field": "NumberOfEmployees", "op": "contains", "value": "1"}, "compares text"),
    ({"field": "Email", "op": "after", "value": "2020-01-01"}, "compares dates"),
    ({"field": "Nope", "op": "is empty"}, "not a field of this object"),
]


@pytest.mark.parametrize("tree, message", TYPE_REFUSED)
def test_values_must_fit_the_field_type(tree, message) -> None:
    with pytest.raises(filters.FilterError, match=message):
        to_soql(filters.parse(tree), TYPES)


def test_translation_of_null_numeric_date_and_nested_levels() -> None:
    tree = {"and": [{"field": "email", "op": "is not empty"},
                    {"or": [{"field": "NumberOfEmployees", "op": ">=", "value": 100},
                            {"field": "Birthdate", "op": "before", "value": "1970/01/27"},
                            {"field": "LastModifiedDate", "op": "after", "value": "new Date(2012,10,1)"},
                            {"field": "LastModifiedDate", "op": ">=", "value": "2012-06-27 14:25:00"}]}]}
    assert to_soql(filters.parse(tree), TYPES) == (
        "(Email != null AND (NumberOfEmployees >= 100 OR Birthdate < 1970-01-27 OR "
        "LastModifiedDate > 2012-11-01T23:59:59.999Z OR LastModifiedDate >= 2012-06-27T14:25:00.000Z))")


def test_strings_are_escaped_so_a_value_cannot_change_the_query() -> None:
    assert escape_string("O'Brien \\ \"x\"\n") == "O\\'Brien \\\\ \\\"x\\\"\\n"
    injected = {"field": "LastName", "op": "=", "value": "x' OR LastName != 'y"}
    assert to_soql(filters.parse(injected), TYPES) == "LastName = 'x\\' OR LastName != \\'y'"
    contains = {"field": "LastName", "op": "contains", "value": "50%_off\\"}
    assert to_soql(filters.parse(contains), TYPES) == "LastName LIKE '%50\\%\\_off\\\\%'"


def _import_workflow(tag: str, tree: dict) -> model.Workflow:
    return model.Workflow.model_validate({"name": f"filter-{tag}", "activities": [
        {"name": "contacts", "type": "crm", "operation": "import", "object": "Contact", "fields": ["LastName"],
         "filter": {"and": [{"field": "Email", "op": "ends with", "value": f"@{tag}.example.com"}, tree]},
         "publish": False}]})


def test_string_comparisons_run_against_the_sandbox(env: Env, client) -> None:
    tag = uuid.uuid4().hex[:8]
    names = ["O'Brien \\ back", "50% off_sale", "500 offXsale", "x' OR LastName != 'y"]
    client.collections_create("Contact", [{"LastName": n, "Email": f"p{i}@{tag}.example.com"}
                                          for i, n in enumerate(names)])

    def found(tree: dict) -> list[str]:
        result = env.run(_import_workflow(tag, tree))
        assert result.ok, result.activities[0].message
        return sorted(r["LastName"] for r in result.activities[0].outputs.ok)

    assert found({"field": "LastName", "op": "=", "value": "O'Brien \\ back"}) == ["O'Brien \\ back"]
    assert found({"field": "LastName", "op": "contains", "value": "0% off_"}) == ["50% off_sale"]
    assert found({"field": "LastName", "op": "=", "value": "x' OR LastName != 'y"}) == ["x' OR LastName != 'y"]
    assert found({"field": "LastName", "op": "like", "value": "50%"}) == ["50% off_sale", "500 offXsale"]
    assert found({"field": "LastName", "op": "in", "value": ["O'Brien \\ back", "nobody"]}) == ["O'Brien \\ back"]


def test_an_invalid_workflow_file_exits_2_naming_file_key_and_fix(env: Env, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nactivities:\n  - name: c\n    type: crm\n    operation: import\n    object: Contact\n"
                   "    filter: {and: [{field: Email, op: is empty}], or: [{field: Email, op: is empty}]}\n"
                   "    then: nowhere\n")
    process = env.cli("run", str(bad))
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 2, output
    assert f"{bad}: activities.0.filter: AND and OR cannot be mixed on one level: nest one group inside the " \
           "other, e.g. {and: [a, {or: [b, c]}]}" in output
    bad.write_text("name: bad\nactivities:\n  - name: c\n    type: query\n    table: recipients\n    then: nowhere\n")
    process = env.cli("validate", str(bad))
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 2 and f"{bad}: activities: Value error" not in output
    assert "activity 'c' sends its ok output to 'nowhere', which is not an activity of this workflow" in output
