"""What ``deeplungreg review`` opens: the output folder of ``deeplungreg register``, checked before any
viewer starts, and turned back into the job and outputs that the Slicer bridge writes as nodes.

The folder holds the field, the warped image and the maps, and ``metrics.json`` (TRE per landmark,
the landmarks themselves and the paths of the registered images). The images themselves are read
from those paths (or from ``--fixed``/``--moving``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..io.images import read_image
from ..io.roles import ROLES, maps
from ..io.runs import METRICS_FILE, RunFolder, check_metrics  # noqa: F401  (check_metrics: the check of what the page reads)
from ..pipeline import RegistrationJob, RegistrationOutputs, read_outputs

#: Files the page cannot do without.
REQUIRED_FILES = (METRICS_FILE, ROLES["transform"].file, ROLES["warped"].file)
#: Views shown only when their file or data is there: the maps of the table of output roles.
OPTIONAL_VIEWS = {role.name: role.file for role in maps()}


@dataclass
class ReviewFolder:
    """A registration output folder that the review page can show.

    Attributes:
        path: the folder.
        metrics: its ``metrics.json``.
        run: the folder as :class:`~DeepLungRegLib.io.runs.RunFolder` read it.
        fixed_path, moving_path: the registered images.
        views: which optional views exist: ``"jacobian"``, ``"ventilation"``, ``"ventilation_hu"``, ``"landmarks"``.
    """

    path: Path
    metrics: dict
    fixed_path: Path
    moving_path: Path
    views: dict[str, bool]
    run: RunFolder

    @classmethod
    def open(cls, folder: str | Path, *, fixed: str | Path | None = None, moving: str | Path | None = None) -> "ReviewFolder":
        """Check ``folder``; every problem is one line that names what is missing."""
        run = RunFolder.read(folder, owner="review")
        folder, metrics = run.path, run.metrics
        missing = [f for f in REQUIRED_FILES[1:] if not (folder / f).is_file()]
        if missing:
            raise DeepLungRegError(f"review: {folder} lacks {' and '.join(missing)}, which the page needs")
        paths = []
        for which, given in (("fixed", fixed), ("moving", moving)):
            path = given or run.input_path(which)
            if not path:
                raise DeepLungRegError(f"review: {folder / 'metrics.json'} does not name the {which} image (a run of the Slicer "
                                       f"module, or of an older version); pass --{which} FILE")
            if not Path(path).is_file():
                raise DeepLungRegError(f"review: the {which} image {path} does not exist"
                                       + ("" if given else f" (metrics.json names it); pass --{which} FILE"))
            paths.append(Path(path))
        views = {name: (folder / f).is_file() for name, f in OPTIONAL_VIEWS.items()}
        views["landmarks"] = run.landmarks is not None
        return cls(folder, metrics, paths[0], paths[1], views, run)

    def job(self) -> RegistrationJob:
        """The registration's job, rebuilt: its images, method, options and landmarks."""
        fixed = read_image(self.fixed_path, what=f"fixed image {self.fixed_path}")
        moving = read_image(self.moving_path, what=f"moving image {self.moving_path}")
        grid = Geometry.from_dict(self.metrics["fixed_grid"])
        if not fixed.geometry.same_as(grid):
            raise DeepLungRegError(f"review: the fixed image {self.fixed_path} is not the one registered into {self.path} "
                                   f"(its grid is {list(fixed.geometry.size)} voxels at {list(np.round(fixed.geometry.spacing, 3))} mm, "
                                   f"the registration's {list(grid.size)} at {list(np.round(grid.spacing, 3))} mm)")
        fl, ml, labels = self.run.landmarks or (None, None, None)
        return RegistrationJob(fixed, moving, self.run.method, None, None, fl, ml, labels, self.metrics.get("config"), "cpu")

    def outputs(self) -> RegistrationOutputs:
        """The field, the warped image and the maps, read back."""
        return read_outputs(self.run)
