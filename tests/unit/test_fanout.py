"""A parent's child parameters become child jobs; the children's replies say when it may
move on. Pure functions: no Redis."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from procflow.errors import ParentError
from procflow.store.keys import StageKeys
from procflow.worker.fanout import child_keys_of, children_state, plan_children

CHILD_STAGES = {
    "c1": StageKeys.build("F", "p:c1", parent_queue="p"),
    "c2": StageKeys.build("F", "p:c2", parent_queue="p"),
}


# -- plan_children ---------------------------------------------------------------------


def test_each_parameter_object_becomes_one_child_of_its_queue() -> None:
    params = [
        {"childName": "c1", "n": 1, "text": "x"},
        {"childName": "c2", "nested": {"a": [1, None]}},
        {"childName": "c1"},
    ]
    plan = plan_children("p", params, CHILD_STAGES)

    assert len(plan.children) == 3
    (id1, key1, waiting1, fields1), (id2, key2, waiting2, fields2), (id3, key3, _, fields3) = (
        plan.children
    )
    assert key1 == f"job:p:c1:{id1}"
    assert key2 == f"job:p:c2:{id2}"
    assert key3 == f"job:p:c1:{id3}"
    assert waiting1 == "queue:p:c1:waiting"
    assert waiting2 == "queue:p:c2:waiting"
    assert list(fields1) == [(b"n", b"1"), (b"text", b'"x"')]
    assert list(fields2) == [(b"nested", b'{"a":[1,null]}')]
    assert list(fields3) == []
    assert len({id1, id2, id3}) == 3


def test_childname_is_not_copied_into_the_child() -> None:
    plan = plan_children("p", [{"childName": "c1", "v": True}], CHILD_STAGES)
    ((_, _, _, fields),) = plan.children
    assert [name for name, _ in fields] == [b"v"]


def test_the_jobs_json_lists_the_child_keys_in_order() -> None:
    plan = plan_children("p", [{"childName": "c2"}, {"childName": "c1"}], CHILD_STAGES)
    assert json.loads(plan.jobs_json) == [c[1] for c in plan.children]
    assert plan.jobs_json.startswith('["job:p:c2:')
    assert " " not in plan.jobs_json  # compact, as JSON.stringify writes it


@pytest.mark.parametrize("params", [None, []])
def test_no_params_or_an_empty_list_plan_no_children(params: Any) -> None:
    plan = plan_children("p", params, CHILD_STAGES)
    assert plan.children == []
    assert plan.jobs_json == "[]"


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"childName": "c1"}, "children:p:params must be a list of objects, got dict"),
        ("c1", "children:p:params must be a list of objects, got str"),
        (3, "children:p:params must be a list of objects, got int"),
        ([{"childName": "c1"}, 5], "children:p:params[1] must be an object, got int"),
        ([["c1"]], "children:p:params[0] must be an object, got list"),
        ([{"v": 1}], "children:p:params[0]: childName None is not a child queue of 'p'"),
        (
            [{"childName": "c1"}, {"childName": "nope"}],
            "children:p:params[1]: childName 'nope' is not a child queue of 'p'",
        ),
        ([{"childName": 1}], "children:p:params[0]: childName 1 is not a child queue of 'p'"),
        ([{"childName": "p:c1"}], "childName 'p:c1' is not a child queue"),
    ],
)
def test_malformed_params_are_refused_naming_the_field(params: Any, problem: str) -> None:
    with pytest.raises(ParentError, match=re.escape(problem)):
        plan_children("p", params, CHILD_STAGES)


def test_an_unknown_childname_message_lists_the_known_children() -> None:
    with pytest.raises(ParentError, match=re.escape("(its children: c1, c2)")):
        plan_children("p", [{"childName": "c3"}], CHILD_STAGES)


# -- children_state -------------------------------------------------------------------------


def test_all_children_done_with_none_failed() -> None:
    replies = [1, [b"true", None], 1, [b'"true"', None]]
    assert children_state(["k1", "k2"], replies) == (True, [])


def test_done_is_true_as_json_true_and_as_the_typescript_monitors_string() -> None:
    assert children_state(["k"], [1, [b"true", None]]) == (True, [])
    assert children_state(["k"], [1, [b'"true"', None]]) == (True, [])
    assert children_state(["k"], [1, [b"false", None]]) == (False, [])
    assert children_state(["k"], [1, [b"1", None]]) == (False, [])


def test_a_child_not_done_holds_the_parent_back() -> None:
    replies = [1, [b"true", None], 1, [None, None]]
    assert children_state(["k1", "k2"], replies) == (False, [])


def test_failed_children_are_listed_in_order() -> None:
    replies = [1, [b"true", b"true"], 1, [b"true", None], 1, [b"true", b'"true"']]
    assert children_state(["k1", "k2", "k3"], replies) == (True, ["k1", "k3"])


def test_a_child_whose_hash_is_gone_counts_as_done_and_failed() -> None:
    replies = [0, [None, None], 1, [b"true", None]]
    assert children_state(["gone", "k2"], replies) == (True, ["gone"])


def test_a_failed_child_not_yet_done_is_listed_but_still_pending() -> None:
    assert children_state(["k"], [1, [None, b"true"]]) == (False, ["k"])


def test_no_children_are_all_done() -> None:
    assert children_state([], []) == (True, [])


# -- child_keys_of ------------------------------------------------------------------------


def test_a_list_of_job_keys_is_accepted_as_it_is() -> None:
    value = ["job:p:c1:a", "job:p:c2:b"]
    assert child_keys_of("children:p:jobs", value) == value
    assert child_keys_of("children:p:jobs", []) == []


@pytest.mark.parametrize("value", ["job:p:c1:a", None, {"k": "v"}, [1], ["ok", None], 3])
def test_anything_but_a_list_of_strings_is_refused(value: Any) -> None:
    with pytest.raises(ParentError, match=re.escape("children:p:jobs must be a list of job keys")):
        child_keys_of("children:p:jobs", value)
