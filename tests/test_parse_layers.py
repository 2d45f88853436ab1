"""engine.layer_spec.parse_layers: the one layer-list grammar (kv watch_layers, layer_skip skip_layers)."""
import pytest

from engine.errors import MethodError
from engine.layer_spec import parse_layers

N = 30


@pytest.mark.parametrize("spec,want", [
    # what kv's watch_layers accepted
    ("all", list(range(N))), ("ALL", list(range(N))), (" all ", list(range(N))),
    ("none", []), ("", []), ("  ", []),
    ("first,mid,last", [0, 15, 29]), ("mid", [15]), ("middle", [15]), ("First, Last", [0, 29]),
    ("0,5,29", [0, 5, 29]), ("5,0,5", [0, 5]), ("-1", [29]), ("-30", [0]), ("0,-1", [0, 29]), ("+3", [3]),
    ("last,29", [29]),
    # what layer_skip's skip_layers accepted
    ("5,7,9-20", [5, 7] + list(range(9, 21))), ("9 - 12", [9, 10, 11, 12]), ("3-3", [3]),
    ("1,,2,", [1, 2]), ("0-29", list(range(N))), ("12,10-12", [10, 11, 12]), ("007", [7]),
    # the union: names and negative indices as range ends
    ("mid-last", list(range(15, 30))), ("27--1", [27, 28, 29]), ("first-2", [0, 1, 2]),
])
def test_accepts(spec, want):
    assert parse_layers(spec, N) == want


@pytest.mark.parametrize("spec,match", [
    ("99", r"watch_layers: layer '99' does not exist: it is outside 0\.\.29 \(the model has 30 layers"),
    ("30", "does not exist"), ("-31", "does not exist"),
    ("0-100000000", r"outside 0\.\.29"), ("1" * 400, "outside"), ("0-" + "9" * 400, "outside"),
    ("a,b", "watch_layers: 'a' is not a layer index, range or name; write a list like 0,5,9-20"),
    ("abc", "a list like"), ("1.5", "not a layer index"), ("1-2-3", "not a layer index"),
    ("٣", "not a layer index"), ("all,1", "not a layer index"), ("none,1", "not a layer index"),
    ("5-3", r"the range '5-3' runs backwards \(5 > 3\)"), ("last-first", "backwards"), ("-", "not a layer index"),
])
def test_rejects(spec, match):
    with pytest.raises(MethodError, match=match):
        parse_layers(spec, N, "watch_layers")


def test_names_the_option_and_quotes_briefly():
    with pytest.raises(MethodError, match="^skip_layers: ") as e:
        parse_layers("x" * 3000, N, "skip_layers")
    assert len(str(e.value)) < 300
    with pytest.raises(MethodError, match="^layers: "):
        parse_layers("nope", N)


def test_small_models():
    assert parse_layers("first,mid,last", 1) == [0]
    assert parse_layers("first,mid,last", 2) == [0, 1]
    with pytest.raises(MethodError, match=r"outside 0\.\.1 \(the model has 2 layers"):
        parse_layers("2", 2)


def test_both_options_use_it():
    import engine.methods.kv as kv
    import engine.methods.speculative.drafters as drafters
    assert drafters.parse_layers is parse_layers and kv.parse_layers is parse_layers
