"""Make the sample pair that the Slicer module offers in Sample Data.

Usage: python scripts/make_sample_pair.py

The inhale is the bundled demo CT (DeepLungRegLib/data/sample/popi00_demo.nrrd) as it is;
the exhale is simulated from it by the library's breathing simulator with a fixed seed
(DeepLungRegLib.data.SAMPLE_PAIR_SIMULATION), so running this again gives the same files.
Written beside the demo CT:

* popi00_demo_exhale.nrrd: the exhale, int16 HU, gzip NRRD on the inhale's grid;
* popi00_demo_inhale.mrk.json, popi00_demo_exhale.mrk.json: Slicer markups of corresponding
  landmarks (Förstner keypoints in the inhale lung and where the simulated motion takes them),
  the same points in the same order, labelled L1, L2, ...

and the Sample Data thumbnail DeepLungReg/Resources/Icons/DeepLungRegSamplePair.png (a coronal
slice of the inhale beside the exhale, lung window; needs matplotlib).

The simulation adds no noise: the inhale must stay the demo CT bit for bit (it is one file,
shipped once), and the simulated exhale is resampled, so the two images still differ in noise
texture as a real pair does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from DeepLungRegLib.data import SAMPLE_PAIR, SAMPLE_PAIR_SIMULATION, sample_path
from DeepLungRegLib.io import read_image, write_image, write_landmarks
from DeepLungRegLib.simulation import simulate_breathing

THUMBNAIL = Path(__file__).resolve().parents[1] / "DeepLungReg" / "Resources" / "Icons" / "DeepLungRegSamplePair.png"


def write_thumbnail(inhale: np.ndarray, exhale: np.ndarray, path: Path) -> None:
    """Coronal slices (z up) of ``(Z, Y, X)`` inhale and exhale side by side, lung window [-1000, 300] HU."""
    import matplotlib.pyplot as plt

    y = inhale.shape[1] // 2
    gap = np.full((inhale.shape[0], 2), 300, inhale.dtype)
    picture = np.concatenate([inhale[::-1, y, :], gap, exhale[::-1, y, :]], axis=1)
    plt.imsave(path, picture, cmap="gray", vmin=-1000, vmax=300)


def main() -> None:
    inhale_file, exhale_file, inhale_points, exhale_points = (name for name, _, _ in SAMPLE_PAIR)
    ct = read_image(sample_path(inhale_file))
    pair = simulate_breathing(ct, **SAMPLE_PAIR_SIMULATION)
    assert np.array_equal(pair.fixed.array, ct.array), "the inhale must be the demo CT unchanged"
    write_image(pair.moving.with_array(pair.moving.array.astype(np.int16)), sample_path(exhale_file))
    labels = [f"L{i + 1}" for i in range(len(pair.fixed_landmarks))]
    write_landmarks(pair.fixed_landmarks, sample_path(inhale_points), labels=labels)
    write_landmarks(pair.moving_landmarks, sample_path(exhale_points), labels=labels)
    write_thumbnail(pair.fixed.array, pair.moving.array, THUMBNAIL)
    i = pair.info
    sizes = ", ".join(f"{name} {sample_path(name).stat().st_size / 1e6:.2f} MB" for name, _, _ in SAMPLE_PAIR)
    print(f"sample pair (seed {i['seed']}): mean lung displacement {i['mean_lung_displacement_mm']:.1f} mm, "
          f"max {i['max_lung_displacement_mm']:.1f} mm, {i['n_landmarks']} landmarks; {sizes}")


if __name__ == "__main__":
    main()
