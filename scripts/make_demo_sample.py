"""Derive the bundled demo CT from the POPI phase-00 volume in ../shared/data.

Usage: python scripts/make_demo_sample.py [../shared/data/popi/popi00.nrrd]

The volume is resampled to 2.5 mm isotropic voxels (anti-aliased) and cropped
to the lungs plus a 30 mm margin in x and y (all slices kept), then written
as a gzip NRRD of int16 HU to DeepLungRegLib/data/sample/popi00_demo.nrrd.
"""

import sys
from pathlib import Path

import numpy as np

from DeepLungRegLib.io import read_image, write_image
from DeepLungRegLib.segmentation import lung_mask
from DeepLungRegLib.transforms import resample_to_spacing, resample_to_geometry

src = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared/data/popi/popi00.nrrd")
out = Path(__file__).resolve().parents[1] / "DeepLungRegLib" / "data" / "sample" / "popi00_demo.nrrd"
ct = resample_to_spacing(read_image(src), 2.5, fill=-1024.0)
mask = lung_mask(ct).array
kk, jj, ii = np.nonzero(mask)
m = int(np.ceil(30.0 / 2.5))
lo = [max(ii.min() - m, 0), max(jj.min() - m, 0), 0]
hi = [min(ii.max() + m, ct.geometry.size[0] - 1), min(jj.max() + m, ct.geometry.size[1] - 1), ct.geometry.size[2] - 1]
geom = ct.geometry.crop(tuple(lo), tuple(h - l + 1 for l, h in zip(lo, hi)))
crop = resample_to_geometry(ct, geom, mode="linear", fill=-1024.0)
write_image(crop.with_array(np.round(crop.array).astype(np.int16)), out)
print(out, geom.size, geom.spacing, geom.origin, f"{out.stat().st_size / 1e6:.2f} MB")
