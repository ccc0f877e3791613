"""The sample pair (:data:`DeepLungRegLib.data.SAMPLE_PAIR`) in a scene.

The Slicer module offers the pair in the Sample Data module, which loads the four files
with Slicer's readers under the node names of ``SAMPLE_PAIR``. :func:`sample_pair_nodes`
finds them there by those names, so that the module can pick inhale, exhale and both
landmark lists by itself; :func:`load_sample_pair` loads them the same way (Slicer's
storage nodes) where there is no Sample Data module: the console, slicer-core, the tests.
"""

from __future__ import annotations

from ..data import SAMPLE_PAIR, sample_path
from ..errors import DeepLungRegError

#: The roles of the four sample files, in :data:`~DeepLungRegLib.data.SAMPLE_PAIR`'s order.
SAMPLE_ROLES = ("fixed", "moving", "fixed_landmarks", "moving_landmarks")

_CLASSES = {"VolumeFile": ("vtkMRMLScalarVolumeNode", "vtkMRMLVolumeArchetypeStorageNode"),
            "MarkupsFile": ("vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsJsonStorageNode")}


def load_sample_pair(scene) -> dict:
    """Load the sample inhale, exhale and their landmark lists into ``scene`` with Slicer's readers,
    named as Sample Data names them. Returns ``{role: node}`` (roles in :data:`SAMPLE_ROLES`)."""
    nodes = {}
    for role, (name, node_name, file_type) in zip(SAMPLE_ROLES, SAMPLE_PAIR):
        node_class, storage_class = _CLASSES[file_type]
        path = sample_path(name)
        node = scene.AddNewNodeByClass(node_class, node_name)
        storage = scene.AddNewNodeByClass(storage_class)
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            scene.RemoveNode(storage)
            scene.RemoveNode(node)
            raise DeepLungRegError(f"load_sample_pair: Slicer could not read {path}")
        node.SetAndObserveStorageNodeID(storage.GetID())
        node.CreateDefaultDisplayNodes()
        nodes[role] = node
    return nodes


def sample_pair_nodes(scene) -> dict | None:
    """The sample pair's nodes in ``scene`` by role (the last loaded of each name), or ``None`` when
    any of the four is missing."""
    nodes = {}
    for role, (_, node_name, file_type) in zip(SAMPLE_ROLES, SAMPLE_PAIR):
        node_class = _CLASSES[file_type][0]
        found = [n for n in _nodes_named(scene, node_name) if n.IsA(node_class)]
        if not found:
            return None
        nodes[role] = found[-1]
    return nodes


def _nodes_named(scene, name: str) -> list:
    collection = scene.GetNodesByName(name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
