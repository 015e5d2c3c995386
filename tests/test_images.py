from __future__ import annotations

import numpy as np
import pytest

from clothsim.images import ImageDecodeError, load_image


@pytest.mark.parametrize("name", ["truncated", "zero_bytes", "not_an_image", "huge"])
def test_unusable_files_raise_decode_error_naming_the_file(awkward_images, name):
    with pytest.raises(ImageDecodeError) as info:
        load_image(awkward_images[name])
    assert str(awkward_images[name]) in str(info.value)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "nope.jpg")


def test_cmyk_becomes_rgb(awkward_images):
    img = load_image(awkward_images["cmyk"])
    assert img.mode == "RGB" and img.size == (20, 10)


def test_sixteen_bit_is_scaled_not_clipped(awkward_images):
    img = load_image(awkward_images["sixteen_bit"])
    value = np.asarray(img)[0, 0]
    # 40000 / 65535 * 255 ~= 156; plain convert("RGB") would clip it to 255.
    assert img.mode == "RGB" and abs(int(value[0]) - 156) <= 1


def test_palette_with_alpha_is_composited_on_white(awkward_images):
    img = load_image(awkward_images["palette_alpha"])
    assert img.mode == "RGB"
    assert tuple(np.asarray(img)[0, 0]) == (255, 255, 255)


def test_exif_orientation_is_applied(awkward_images):
    img = load_image(awkward_images["exif_rotated"])
    assert img.size == (20, 40)


def test_one_pixel_image_loads(awkward_images):
    assert load_image(awkward_images["one_pixel"]).size == (1, 1)


def test_bbox_crop_is_clipped_to_the_image(awkward_images):
    img = load_image(awkward_images["cmyk"], bbox=(5, 2, 500, 8))
    assert img.size == (15, 6)


def test_empty_bbox_falls_back_to_whole_image(awkward_images):
    assert load_image(awkward_images["cmyk"], bbox=(30, 30, 40, 40)).size == (20, 10)


def test_bytes_input_and_pixel_limit(awkward_images):
    data = awkward_images["cmyk"].read_bytes()
    assert load_image(data).size == (20, 10)
    with pytest.raises(ImageDecodeError, match="over the limit"):
        load_image(data, max_pixels=100)
