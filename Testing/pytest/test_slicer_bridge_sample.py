"""Tests of DeepLungRegLib/slicer_bridge/sample.py: the sample data pair through the node path."""

from __future__ import annotations

import pytest

from helpers_slicer import bridge, hs


@pytest.mark.slow
def test_the_sample_data_pair_registers_through_the_node_path(bridge):
    """The pair that the module offers in Sample Data, loaded with Slicer's readers under the names Sample Data
    gives it, is found by those names (as the module picks it) and registers with the default method through
    register_nodes, the node path the module's Logic delegates to: the TRE table comes at once."""
    from DeepLungRegLib.data import SAMPLE_PAIR
    from DeepLungRegLib.options import DEFAULT_METHOD
    from DeepLungRegLib.slicer_bridge.sample import load_sample_pair, sample_pair_nodes
    from DeepLungRegLib.slicer_bridge.workflow import register_nodes

    hs = bridge.new_scene()
    assert sample_pair_nodes(hs.scene) is None
    loaded = load_sample_pair(hs.scene)
    nodes = sample_pair_nodes(hs.scene)
    assert nodes == loaded and [n.GetName() for n in nodes.values()] == [node for _, node, _ in SAMPLE_PAIR]
    n = nodes["fixed_landmarks"].GetNumberOfControlPoints()
    assert n == nodes["moving_landmarks"].GetNumberOfControlPoints() >= 50
    res = register_nodes(hs.scene, bridge.RegistrationNodes(nodes["fixed"], nodes["moving"], fixed_landmarks=nodes["fixed_landmarks"],
                                                            moving_landmarks=nodes["moving_landmarks"]), DEFAULT_METHOD,
                         device="cpu", show=False)
    before, after = res.metrics["tre_before"]["mean"], res.metrics["tre_after"]["mean"]
    print(f"\nsample pair, {DEFAULT_METHOD}: TRE {before:.2f} mm before, {after:.2f} mm after")
    assert before > 5.0 and after < 0.15 * before
    assert res.metrics["jacobian"]["folding_percent"] == 0.0
    cols = bridge.columns_from_table_node(res.tre_table)
    assert len(cols["TRE after (mm)"]) == n and cols["Landmark"][:2] == ["L1", "L2"]


def test_the_sample_pair_loads_with_slicers_readers_and_is_found_by_its_names(bridge):
    """The loading half of the test above, without the registration (so that `make test-fast` reaches sample.py)."""
    from DeepLungRegLib.data import SAMPLE_PAIR
    from DeepLungRegLib.slicer_bridge.sample import SAMPLE_ROLES, load_sample_pair, sample_pair_nodes

    hs = bridge.new_scene()
    assert sample_pair_nodes(hs.scene) is None
    loaded = load_sample_pair(hs.scene)
    assert list(loaded) == list(SAMPLE_ROLES) and sample_pair_nodes(hs.scene) == loaded
    assert [n.GetName() for n in loaded.values()] == [node for _, node, _ in SAMPLE_PAIR]
    assert loaded["fixed"].GetImageData().GetDimensions() == loaded["moving"].GetImageData().GetDimensions()
    assert loaded["fixed_landmarks"].GetNumberOfControlPoints() == loaded["moving_landmarks"].GetNumberOfControlPoints() >= 50
