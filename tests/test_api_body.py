"""Form bodies parse to what the reference's ``qs`` (extended) parser builds (spec §1.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.api.body import parse_form

CASES = [
    ([("force", "true")], {"force": "true"}),
    ([("network[hostname]", "pi")], {"network": {"hostname": "pi"}}),
    ([("network[proxy][type]", "socks5"), ("network[proxy][port]", "1080")],
     {"network": {"proxy": {"type": "socks5", "port": "1080"}}}),
    ([("a[]", "1"), ("a[]", "2")], {"a": ["1", "2"]}),
    ([("a", "1"), ("a", "2")], {"a": ["1", "2"]}),
    ([("a[1]", "y"), ("a[0]", "x")], {"a": ["x", "y"]}),
    ([("a[3]", "x")], {"a": ["x"]}),  # qs closes gaps
    ([("a[21]", "x")], {"a": {"21": "x"}}),  # past arrayLimit: an object key
    ([("a[0]", "x"), ("a[b]", "y")], {"a": {"0": "x", "b": "y"}}),
    ([("tags[0][name]", "n"), ("tags[0][value]", "v"), ("tags[1][name]", "m")],
     {"tags": [{"name": "n", "value": "v"}, {"name": "m"}]}),
    ([("a[b][c][d][e][f][g][h]", "x")], {"a": {"b": {"c": {"d": {"e": {"f": {"[g][h]": "x"}}}}}}}),
    ([("[x]", "1")], {"x": "1"}),
    ([("", "ignored")], {}),
    ([("a[²]", "x"), ("²", "y")], {"a": {"²": "x"}, "²": "y"}),  # only ASCII digits index (found by fuzzing)
]


@pytest.mark.parametrize(("pairs", "expected"), CASES, ids=[repr(p) for p, _ in CASES])
def test_parse_form_like_qs(pairs, expected) -> None:
    assert parse_form(pairs) == expected


@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=4)), max_size=8))
def test_any_form_parses_to_strings_in_dicts_and_lists(pairs) -> None:
    def leaves(node):
        if isinstance(node, dict):
            return [leaf for v in node.values() for leaf in leaves(v)]
        if isinstance(node, list):
            return [leaf for v in node for leaf in leaves(v)]
        return [node]

    parsed = parse_form(pairs)
    assert isinstance(parsed, dict)
    assert all(isinstance(leaf, str) for leaf in leaves(parsed))
