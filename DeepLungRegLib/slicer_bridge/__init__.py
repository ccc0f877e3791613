"""The bridge between DeepLungRegLib and 3D Slicer's MRML scene.

It imports only what the ``slicer-core`` wheel provides (MRML classes,
``slicer.util`` array helpers, VTK), so it runs inside Slicer and in a bare
Python process alike. RAS appears only here.

* :mod:`.nodes`: volume node <-> :class:`~DeepLungRegLib.io.Image`, displacement
  field <-> ``vtkMRMLGridTransformNode``, markups <-> landmark arrays, table nodes.
* :mod:`.scene`: a bare scene initialised as the Slicer application does.
* :mod:`.selection`: :class:`RegistrationNodes`, the input and output nodes of one registration.
* :mod:`.workflow`: the registration job on nodes, used by the Slicer module's Logic.
* :mod:`.sequence`: a 4D-CT volume sequence registered phase by phase; the results as sequences in one browser.
* :mod:`.review`: the landmark review in the scene (the review itself is :mod:`DeepLungRegLib.evaluation.review`).
* :mod:`.render`: offscreen slice-view pictures.
* :mod:`.grid`: the deformation grid over the fixed volume only; slice views fitted to the fixed volume.

Importing this package needs ``slicer`` (the application or ``pip install slicer-core``).
"""

from .nodes import (
    columns_from_table_node, field_from_grid_transform_node, geometry_from_ijk_to_ras, geometry_from_volume_node,
    grid_transform_from_field, grid_transform_node_from_field, ijk_to_ras_matrix, image_from_volume_node,
    landmarks_from_markups, markups_from_landmarks, markups_labels, mask_from_segmentation, segment_names, table_node_from_columns,
    update_volume_node, volume_node_from_image,
)
from .scene import HeadlessSlicer, load_scene, new_scene, save_scene
from .selection import RegistrationNodes

__all__ = [
    "HeadlessSlicer", "columns_from_table_node", "field_from_grid_transform_node", "geometry_from_ijk_to_ras",
    "geometry_from_volume_node", "grid_transform_from_field", "grid_transform_node_from_field", "ijk_to_ras_matrix",
    "image_from_volume_node", "landmarks_from_markups", "load_scene", "markups_from_landmarks", "markups_labels", "mask_from_segmentation",
    "new_scene", "RegistrationNodes", "save_scene", "segment_names",
    "table_node_from_columns", "update_volume_node", "volume_node_from_image",
]
