"""The layering contract: `blockskip/` subpackages import only down the layers listed here.

A new upward import (say `families` reaching into `skipping`) fails this test with the line that
made it, so the layers stay a real picture of the code rather than a diagram in docs/architecture.md.
"""

import copy

import grimp
import pytest

# High to low. Siblings in one set are independent: neither may import the other.
LAYERS = (
    grimp.Layer("cli"),
    grimp.Layer("commands", "integrations", independent=True),
    grimp.Layer("shapes"),
    grimp.Layer("estimate", "selection", independent=True),
    grimp.Layer("training", "zeroth_order", "sampling", "dynamic", independent=True),
    grimp.Layer("skipping"),
    grimp.Layer("residuals"),
    grimp.Layer("families", "crops", independent=True),
)
SUBPACKAGES = {name for layer in LAYERS for name in layer.module_tails}


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("blockskip")


def illegal_imports(graph) -> list[str]:
    lines = []
    for dependency in graph.find_illegal_dependencies_for_layers(layers=LAYERS, containers={"blockskip"}):
        for route in dependency.routes:
            for importer in route.heads:
                for imported in route.middle[:1] or route.tails:
                    for detail in graph.get_import_details(importer=importer, imported=imported) or [{}]:
                        where = f"{importer}:{detail.get('line_number', '?')}"
                        lines.append(f"{where} imports {imported} ({dependency.importer} sits below {dependency.imported})")
    return sorted(lines)


def test_every_subpackage_has_a_layer(graph):
    found = {module.split(".")[1] for module in graph.modules if module.count(".") >= 1}
    unplaced = found - SUBPACKAGES - {"version"}
    assert not unplaced, f"add these to LAYERS in tests/test_layering.py: {sorted(unplaced)}"


def test_imports_point_down_the_layers(graph):
    assert illegal_imports(graph) == []


def test_no_subpackage_imports_the_package_root(graph):
    # The root re-exports the public API; reaching back into it from below would hide a cycle.
    importers = sorted(module for module in graph.find_modules_that_directly_import("blockskip") if module != "blockskip")
    assert importers == []


def test_an_upward_import_is_reported_with_its_line(graph):
    graph = copy.deepcopy(graph)
    graph.add_import(importer="blockskip.families.layouts", imported="blockskip.skipping.plan", line_number=7, line_contents="from ..skipping.plan import BlockSkipPlan")
    problems = illegal_imports(graph)
    assert problems == ["blockskip.families.layouts:7 imports blockskip.skipping.plan (blockskip.families sits below blockskip.skipping)"]


def test_siblings_in_a_layer_are_independent(graph):
    graph = copy.deepcopy(graph)
    graph.add_import(importer="blockskip.crops.collator", imported="blockskip.families.layouts", line_number=3, line_contents="from ..families.layouts import get_layout")
    problems = illegal_imports(graph)
    assert problems == ["blockskip.crops.collator:3 imports blockskip.families.layouts (blockskip.crops sits below blockskip.families)"]
