"""The front end of stages (issue 12, points 1-3, 6, 10): the decorator, nodes, the graph, call paths and
pictures. Pure and fast: nothing here runs a stage or starts an executor."""

from __future__ import annotations

import collections
import pickle
import shutil
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cloudpickle
import numpy as np
import pytest

from cloudburst import seeds
from cloudburst.errors import ConfigurationError
from cloudburst.stages.api import Stage, StageOptions, stage
from cloudburst.stages.graph import Graph, find_nodes, substitute
from cloudburst.stages.node import NOT_A_VALUE, Node

RAN: list[str] = []


@stage
def load(n: int = 3) -> list[int]:
    """Load some numbers."""
    RAN.append("load")
    return list(range(n))


@stage(cpu=2, memory="4GB", retries=1)
def fit(x: Any, y: Any, *, scale: float = 1.0) -> float:
    RAN.append("fit")
    return 0.0


@stage()
def square(x: int) -> int:
    return x * x


@stage(name="sample")
def sample() -> float:
    return 0.5


def total(values: Any) -> int:
    return 0


@pytest.fixture(autouse=True)
def nothing_ran() -> Any:
    RAN.clear()
    yield
    assert RAN == [], "making nodes must not run any stage"


# --- the decorator ---------------------------------------------------------------------------------------------


def test_decorator_forms_make_stages_named_by_module_and_qualname() -> None:
    assert isinstance(load, Stage) and isinstance(fit, Stage) and isinstance(square, Stage)
    assert load.name == f"{__name__}:load"
    assert square.name == f"{__name__}:square"
    assert sample.name == "sample"
    plain = stage(total)
    assert plain.name == f"{__name__}:total" and plain.fn is total
    assert stage(name="tot")(total).name == "tot"
    # update_wrapper: help() and IDEs see the user's function
    assert load.__name__ == "load" and load.__doc__ == "Load some numbers." and load.__wrapped__ is load.fn


def test_calling_a_stage_makes_a_node_and_runs_nothing() -> None:
    node = fit(load(), load(5), scale=2.0)
    assert isinstance(node, Node) and node.kind == "call" and node.stage is fit
    assert node.kwargs == {"scale": 2.0}
    assert [n.stage for n in node.inputs()] == [load, load]


def test_decorator_options_are_kept_and_checked() -> None:
    assert fit.options.cpu == 2 and fit.options.memory == "4GB" and fit.options.retries == 1
    assert fit.options.executor_options() == {"cpu": 2, "memory": "4GB", "retries": 1}
    assert load.options == StageOptions()  # nothing set: every field None
    with pytest.raises(ConfigurationError, match=r"cpu=0 must be a positive number of vCPUs"):
        stage(cpu=0)
    with pytest.raises(ConfigurationError, match=r"memory='lots' is not a memory size"):
        stage(memory="lots")


BAD_OPTIONS = [
    ({"cpu": -1}, r"cpu=-1 must be a positive number"),
    ({"cpu": True}, r"cpu=True must be a positive number"),
    ({"cpu": "2"}, r"cpu='2' must be a positive number"),
    ({"memory": "2XB"}, r"unknown unit 'xb'"),
    ({"memory": 0}, r"must be a positive size"),
    ({"retries": -1}, r"retries=-1 must be a whole number ≥ 0"),
    ({"retries": 1.5}, r"retries=1.5 must be a whole number ≥ 0"),
    ({"version": 2}, r"version=2 must be a string, e.g. version='2'"),
    ({"spot": "yes"}, r"spot='yes' must be True or False"),
    ({"cache": 0}, r"cache=0 must be True or False"),
    ({"image": 3}, r"image=3 must be a string"),
]


@pytest.mark.parametrize(("options", "match"), BAD_OPTIONS, ids=lambda v: str(v)[:24])
def test_bad_options_fail_at_the_decorator_and_at_options(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        stage(**options)
    with pytest.raises(ConfigurationError, match=match):
        square.options(**options)


def test_unknown_backend_options_are_kept_sorted_for_the_executor_to_check() -> None:
    s = stage(zeta=1, alpha="a", spot=True)(total)
    assert s.options.backend_options == (("alpha", "a"), ("zeta", 1))
    assert s.options.executor_options() == {"spot": True, "alpha": "a", "zeta": 1}


def test_options_override_the_decorator_and_merge_backend_options() -> None:
    base = stage(cpu=1, memory="2GB", version="1", subnets=("a",), tags={"t": "1"})(total)
    bigger = base.options(cpu=4, tags={"t": "2"}, spot=True)
    assert isinstance(bigger, Stage) and bigger.fn is total and bigger.name == base.name
    assert (bigger.options.cpu, bigger.options.memory, bigger.options.version) == (4, "2GB", "1")
    assert dict(bigger.options.backend_options) == {"subnets": ("a",), "tags": {"t": "2"}}
    assert base.options.cpu == 1, "options() makes a copy; the decorated stage keeps its own"
    # executor_options: what Executor(**...) takes; version and cache are not worker settings
    assert bigger.options.executor_options() == {
        "cpu": 4,
        "memory": "2GB",
        "spot": True,
        "subnets": ("a",),
        "tags": {"t": "2"},
    }
    assert base.options(name="renamed").name == "renamed"


def test_merged_takes_the_set_fields_of_the_override() -> None:
    under = StageOptions(cpu=1, memory="2GB", cache=True, backend_options=(("b", 1), ("a", 1)))
    over = StageOptions(memory="8GB", cache=False, backend_options=(("a", 2),))
    assert under.merged(over) == StageOptions(cpu=1, memory="8GB", cache=False, backend_options=(("a", 2), ("b", 1)))
    assert under.merged(StageOptions()) == under
    assert type(fit.options.merged(over)) is StageOptions


def test_a_stage_decorated_again_keeps_its_options_under_the_new_ones() -> None:
    again = stage(memory="8GB")(fit)
    assert again.fn is fit.fn and again.name == fit.name
    assert (again.options.cpu, again.options.memory) == (2, "8GB")


def test_a_stage_pickles_with_its_options() -> None:
    # a stage referenced by another stage's function travels to the worker with it
    copy = pickle.loads(cloudpickle.dumps(fit.options(cpu=3)))
    assert isinstance(copy, Stage) and copy.name == fit.name and copy.options.cpu == 3
    assert copy.options(cpu=1).options.cpu == 1


def test_inside_a_worker_a_stage_call_runs_the_function() -> None:
    results: list[Any] = []

    def worker_thread() -> None:  # seeds' item index is thread-local: this thread plays a worker's task
        seeds.set_index(0)
        results.append(square(7))
        results.append(square.map([1, 2, 3]))

    thread = threading.Thread(target=worker_thread)
    thread.start()
    thread.join()
    assert results == [49, [1, 4, 9]]
    assert isinstance(square(7), Node), "outside a worker a call is a node again"


# --- bad calls fail where they are written ---------------------------------------------------------------------

BAD_CALLS: list[tuple[Callable[[], Any], str]] = [
    (lambda: fit(1), r"missing a required argument: 'y'"),
    (lambda: fit(1, 2, 3), r"too many positional arguments"),
    (lambda: fit(1, 2, shape=3), r"got an unexpected keyword argument 'shape'"),
    (lambda: square.map([1, 2], [3, 4]), r"\.map\(\): too many positional arguments"),
    (lambda: square.map([1], bogus=1), r"got an unexpected keyword argument 'bogus'"),
    (lambda: square.map(load(), load()), r"maps over one node at a time"),
    (lambda: square.map(), r"needs something to map over"),
    (lambda: square.map(3), r"takes iterables \(or one node\)"),
]


@pytest.mark.parametrize(("call", "match"), BAD_CALLS, ids=[m for _, m in BAD_CALLS])
def test_a_bad_call_is_a_type_error_at_the_call_naming_the_stage(call: Callable[[], Any], match: str) -> None:
    with pytest.raises(TypeError, match=match) as caught:
        call()
    assert __name__ in str(caught.value), "the message names the stage"


def test_map_reads_its_iterables_now_zipped_shortest_first() -> None:
    numbers = iter([1, 2, 3])
    node = fit.map(numbers, ["a", "b"], scale=2.0, chunksize=5)
    assert next(numbers, None) is None, "read when the call is made, not later"
    assert node.kind == "map" and node.items == [(1, "a"), (2, "b")]
    assert node.broadcast == {"scale": 2.0} and node.chunksize == 5
    over = square.map(load())
    assert isinstance(over.items, Node) and over.inputs() == [over.items]
    with pytest.raises(ConfigurationError, match=r"chunksize=0 must be a whole number ≥ 1"):
        square.map([1], chunksize=0)


# --- a node is not its value -----------------------------------------------------------------------------------

MISUSE: list[tuple[str, Callable[[Node], Any]]] = [
    ("bool", bool),
    ("if", lambda n: 1 if n else 0),
    ("len", len),
    ("iter", list),
    ("unpack", lambda n: [*n]),
    ("index", lambda n: n[0]),
    ("in", lambda n: 1 in n),
    ("numpy", np.asarray),
    ("float", float),
    ("int", int),
    ("pickle", pickle.dumps),
    ("cloudpickle", cloudpickle.dumps),
    ("hidden in an object", lambda n: cloudpickle.dumps(collections.UserList([n]))),
]


@pytest.mark.parametrize(("what", "use"), MISUSE, ids=[w for w, _ in MISUSE])
def test_using_a_node_as_its_value_says_what_to_do(what: str, use: Callable[[Node], Any]) -> None:
    with pytest.raises(TypeError, match=r"a Node is not its value; pass it to another stage or to cloudburst\.compute"):
        use(load())
    assert NOT_A_VALUE == "a Node is not its value; pass it to another stage or to cloudburst.compute"


def test_a_node_has_a_readable_repr_even_at_the_end_of_a_long_chain() -> None:
    node = fit([load(), 2], {"k": load()}, scale=2.0)
    assert repr(node) == "<Node fit([load(…), 2], {'k': load(…)}, scale=2.0)>"
    assert repr(square.map([1, 2])) == "<Node square.map(2 items)>"
    assert repr(square.map(load())) == "<Node square.map(load(…))>"
    chain = load()
    for _ in range(3000):
        chain = square([chain])
    assert repr(chain) == "<Node square([square(…)])>"


# --- finding and replacing nodes in arguments ------------------------------------------------------------------

Pair = collections.namedtuple("Pair", "left right")


def test_nodes_are_found_in_args_kwargs_and_nested_containers_each_once() -> None:
    a, b, c, d = load(), load(), load(), load()
    node = fit([a, (b, {"deep": [c]})], y=Pair(d, a), scale={"n": [b]})
    assert node.inputs() == [a, b, c, d]
    assert find_nodes({"x": [a, (1, d)], "y": "text"}) == [a, d]
    assert find_nodes([1, "two", 3.0]) == []
    assert find_nodes(a) == [a]


def test_substitute_rebuilds_the_containers_that_hold_nodes_and_keeps_the_rest() -> None:
    a, b = load(), load()
    untouched = [1, 2, 3]
    value = {"list": [a, untouched], "tuple": (b, 1), "pair": Pair(a, b), "plain": untouched}
    out = substitute(value, lambda n: "A" if n is a else "B")
    assert out == {"list": ["A", [1, 2, 3]], "tuple": ("B", 1), "pair": Pair("A", "B"), "plain": [1, 2, 3]}
    assert type(out["pair"]) is Pair
    assert out["plain"] is untouched and out["list"][1] is untouched, "nothing copied that holds no node"
    assert substitute(untouched, lambda n: 0) is untouched
    assert value["list"][0] is a, "the arguments themselves are left as they were"


HIDDEN: list[tuple[str, Callable[[Node], Any], str]] = [
    ("set", lambda n: fit({n}, 1), r"argument `x` holds a Node inside a set"),
    ("frozenset in a list", lambda n: fit([frozenset([n])], 1), r"argument `x` holds a Node inside a frozenset"),
    ("deque", lambda n: fit(1, y=collections.deque([n])), r"argument `y` holds a Node inside a deque"),
    ("dict subclass", lambda n: fit(1, collections.OrderedDict(k=n)), r"argument `y` holds a Node inside a Ordered"),
    ("dict key", lambda n: fit({n: 1}, 1), r"argument `x` holds a Node inside a dict"),
    ("map item", lambda n: square.map([{n}]), r"\.map\(\): item 0 holds a Node inside a set"),
    ("map broadcast", lambda n: fit.map([1], [2], scale={n}), r"argument `scale` holds a Node inside a set"),
]


@pytest.mark.parametrize(("what", "call", "match"), HIDDEN, ids=[w for w, _, _ in HIDDEN])
def test_a_node_in_a_container_the_pipeline_does_not_walk_is_refused(
    what: str, call: Callable[[Node], Any], match: str
) -> None:
    with pytest.raises(TypeError, match=match) as caught:
        call(load())
    assert __name__ in str(caught.value) and "lists, tuples and dicts" in str(caught.value)


# --- the graph -------------------------------------------------------------------------------------------------


def test_graph_is_topological_and_has_each_node_once() -> None:
    shared = load()
    left, right = square(shared), square(shared)
    out = fit([left, right], shared)
    graph = Graph.build([out, left])
    assert graph.nodes == [shared, left, right, out]  # inputs first, in order of appearance
    assert graph.dependents[id(shared)] == [left, right, out]
    assert graph.dependents[id(out)] == []
    assert graph.fanned == set()


def test_a_map_over_a_node_fans_that_node_out() -> None:
    numbers = load(10)
    squares = square.map(numbers)
    summed = fit(squares, numbers)
    graph = Graph.build([summed])
    assert graph.nodes == [numbers, squares, summed]
    assert graph.fanned == {id(numbers)}
    assert graph.dependents[id(numbers)] == [squares, summed]


def test_graph_refuses_what_is_not_a_node() -> None:
    with pytest.raises(TypeError, match=r"compute takes nodes .*not int"):
        Graph.build([load(), 3])  # type: ignore[list-item]


def test_a_chain_of_ten_thousand_stages_builds() -> None:
    first = node = load()
    for _ in range(10_000):
        node = square(node)
    graph = Graph.build([node])
    assert len(graph.nodes) == 10_001 and graph.nodes[0] is first and graph.nodes[-1] is node
    assert max(len(path) for path in graph.paths.values()) < 200, "paths stay short in deep graphs"
    assert len(set(graph.paths.values())) == 10_001


# --- call paths ------------------------------------------------------------------------------------------------


def _pipeline(x_first: bool, n: int = 1000) -> tuple[Node, dict[str, Node]]:
    """The issue's example; ``x_first`` builds the unrelated branches in the other order."""
    if x_first:
        x, y = load(n), sample()
    else:
        y, x = sample(), load(n)
    out = fit(x, y)
    return out, {"x": x, "y": y, "out": out}


def test_call_paths_do_not_depend_on_the_order_unrelated_branches_were_built() -> None:
    paths = []
    for x_first in (True, False):
        out, named = _pipeline(x_first)
        graph = Graph.build([out])
        paths.append({name: graph.paths[id(node)] for name, node in named.items()})
    assert paths[0] == paths[1]
    assert paths[0] == {
        "x": f"{__name__}:load()#0",
        "y": "sample()#0",
        "out": f"{__name__}:fit({__name__}:load()#0,sample()#0)#0",
    }


def test_literal_arguments_are_not_in_call_paths() -> None:
    small, _ = _pipeline(True, n=10)
    large, _ = _pipeline(True, n=10**6)
    assert Graph.build([small]).paths[id(small)] == Graph.build([large]).paths[id(large)]


def test_siblings_are_ranked_by_creation_order() -> None:
    first, second = sample(), sample()
    out = fit(second, first)  # used in the other order: the rank still follows creation
    paths = Graph.build([out]).paths
    assert (paths[id(first)], paths[id(second)]) == ("sample()#0", "sample()#1")
    assert paths[id(out)] == f"{__name__}:fit(sample()#1,sample()#0)#0"
    # same stage and inputs, but a call and a map: not siblings, told apart by ".map"
    numbers = load()
    one, many = square(numbers), square.map(numbers)
    paths = Graph.build([one, many]).paths
    assert paths[id(one)] == f"{__name__}:square({__name__}:load()#0)#0"
    assert paths[id(many)] == f"{__name__}:square.map({__name__}:load()#0)#0"


def test_long_input_paths_are_replaced_by_their_digest() -> None:
    inputs = [sample() for _ in range(20)]
    out = fit(inputs, 1)
    path = Graph.build([out]).paths[id(out)]
    assert path.startswith(f"{__name__}:fit(~") and path.endswith(")#0") and len(path) < 80


# --- pictures --------------------------------------------------------------------------------------------------


def _example() -> tuple[Node, Node]:
    x = load()
    return fit(square(x), sample(), scale=fit(x, x)), x


def test_visualize_draws_a_text_tree_with_shapes_and_a_shared_node_once() -> None:
    out, _ = _example()
    text = out.visualize()
    assert text == (
        "fit  2 vCPU, 4 GB\n├── square\n│   └── load\n├── sample\n└── fit  2 vCPU, 4 GB\n    └── → load (above)\n"
    )
    assert repr(text) == str(text), "shows as the tree at a prompt"
    assert out.visualize(format="text") == text


def test_visualize_dot_has_every_call_once_and_every_edge() -> None:
    out, _ = _example()
    dot = out.visualize(format="dot")
    assert dot.startswith("digraph pipeline {") and dot.rstrip().endswith("}")
    assert dot.count("[label=") == 5
    assert r'[label="fit\n2 vCPU, 4 GB"' in dot
    assert dot.count(" -> ") == 5  # load->square, square->fit, sample->fit, load->fit(x, x) once, fit->fit
    assert f'tooltip="{__name__}:load()#0"' in dot


def test_visualize_colours_calls_by_their_status_in_a_report() -> None:
    out, x = _example()
    paths = Graph.build([out]).paths
    # a RunReport is duck-typed: its stages' call (the call path) and status
    report = SimpleNamespace(
        stages=[
            SimpleNamespace(call=paths[id(x)], status="cached"),
            SimpleNamespace(call=paths[id(out)], status="failed"),
        ]
    )
    text = out.visualize(report=report)
    assert text.splitlines()[0] == "fit  2 vCPU, 4 GB  [failed]"
    assert "load  [cached]" in text
    dot = out.visualize(format="dot", report=report)
    assert dot.count('fillcolor="#cfe2f3"') == 1 and dot.count('fillcolor="#f4cccc"') == 1


def test_visualize_writes_the_format_its_filename_names(tmp_path: Path) -> None:
    out, _ = _example()
    written = out.visualize(filename=tmp_path / "pipeline.dot")
    assert written == tmp_path / "pipeline.dot"
    assert written.read_text() == out.visualize(format="dot")
    assert (out.visualize(filename=tmp_path / "p.txt")).read_text() == out.visualize()
    with pytest.raises(ConfigurationError, match=r"cannot tell the format of .*\.jpeg"):
        out.visualize(filename=tmp_path / "p.jpeg")
    with pytest.raises(ConfigurationError, match=r"format='pdf' is not known"):
        out.visualize(format="pdf")


def test_pictures_without_graphviz_say_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "graphviz", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'cloudburst\[viz\]'"):
        load().visualize(format="svg")


def test_pictures_without_graphviz_dot_say_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("graphviz")
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` to be found, whether Graphviz is installed or not
    with pytest.raises(RuntimeError, match=r"drawing SVG needs Graphviz's `dot` program: .*apt install graphviz"):
        load().visualize(filename=tmp_path / "p.svg")
    assert not (tmp_path / "p.svg").exists()


def test_visualize_renders_svg_with_graphviz(tmp_path: Path) -> None:
    pytest.importorskip("graphviz")
    if shutil.which("dot") is None:
        pytest.skip("needs Graphviz's dot")
    out, _ = _example()
    written = out.visualize(filename=tmp_path / "p.svg")
    svg = written.read_text()
    assert "<svg" in svg and svg.count('class="node"') == 5 and "2 vCPU, 4 GB" in svg
