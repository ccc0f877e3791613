"""Helpers shared by the feature tests."""

import pytest

from DeepLungRegLib.io.images import read_image
from DeepLungRegLib.transforms import resample_to_spacing


@pytest.fixture(scope="module")
def ct3(sample_path):
    return resample_to_spacing(read_image(sample_path), 3.0, fill=-1024.0)
