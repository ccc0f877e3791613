"""The nodes of one registration in the scene: what the user chose as inputs and outputs.

One :class:`RegistrationNodes` is what the Slicer module's Logic, :func:`.workflow.register_nodes`,
:func:`.workflow.job_from_nodes`, :func:`.workflow.write_nodes` and
:class:`.background.BackgroundRegistration` take, instead of each writing out the list of nodes.
It imports nothing beyond the standard library and the table of output roles, so the Slicer module
can make one before torch loads.

>>> register_nodes(scene, RegistrationNodes(fixed, moving), method="embed")
>>> register_nodes(scene, RegistrationNodes(fixed, moving, fixed_mask=lungs, fixed_landmarks=f, moving_landmarks=m,
...                                         outputs={"warped": my_volume}))
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import DeepLungRegError
from ..io.roles import ROLES


@dataclass
class RegistrationNodes:
    """The input nodes of a registration and the output node per role.

    Attributes:
        fixed, moving: scalar volume nodes (a linear parent transform is honoured).
        fixed_mask, moving_mask: a (labelmap) volume node on any grid of its scan, a segmentation node
            (e.g. from Lung CT Segmenter or TotalSegmentator), ``"auto"`` (automatic lung mask) or ``None``.
        fixed_mask_segments, moving_mask_segments: with a segmentation node, the names (or IDs) of the
            lung segments; ``None``: every segment whose name contains "lung".
        fixed_landmarks, moving_landmarks: markups point lists with corresponding points (same count and
            order), or ``None``.
        outputs: output nodes chosen by the user, by role (:data:`DeepLungRegLib.io.roles.OUTPUT_ROLES`:
            ``"transform"``, ``"warped"``, ``"jacobian"``, ...); the others are found among this pair's
            earlier outputs or created.
    """

    fixed: object
    moving: object
    fixed_mask: object = "auto"
    moving_mask: object = "auto"
    fixed_mask_segments: list | None = None
    moving_mask_segments: list | None = None
    fixed_landmarks: object = None
    moving_landmarks: object = None
    outputs: dict = field(default_factory=dict)

    def inputs(self) -> list:
        """The user's nodes a registration reads (masks given as ``"auto"``/``None`` are not nodes): never an output."""
        nodes = [self.fixed, self.moving, self.fixed_landmarks, self.moving_landmarks]
        return [n for n in nodes + [self.fixed_mask, self.moving_mask] if n is not None and not isinstance(n, str)]

    def check(self) -> None:
        """Check the choice before any work: two different volumes, and output nodes of known roles, of the
        right node classes, none of them an input. Each problem is one line."""
        if self.fixed is None or self.moving is None:
            raise DeepLungRegError("register: choose both a fixed and a moving volume")
        if self.fixed.GetID() == self.moving.GetID():
            raise DeepLungRegError("register: the fixed and the moving volume are the same node")
        unknown = sorted(set(self.outputs or {}) - set(ROLES))
        if unknown:
            raise DeepLungRegError(f"register: unknown output role(s) {', '.join(unknown)}; known: {', '.join(ROLES)}")
        input_ids = {n.GetID() for n in self.inputs()}
        for role, given in (self.outputs or {}).items():
            if given is None:
                continue
            if given.GetID() in input_ids:
                raise DeepLungRegError(f"register: the {role} output {given.GetName()!r} is one of the inputs; "
                                       "choose another node or 'Create new'")
            if not given.IsA(ROLES[role].node_class):
                raise DeepLungRegError(f"register: the {role} output {given.GetName()!r} is a {given.GetClassName()}, "
                                       f"not a {ROLES[role].node_class}")

    def output(self, role: str):
        """The node the user chose for ``role``, or ``None``."""
        return (self.outputs or {}).get(role)
