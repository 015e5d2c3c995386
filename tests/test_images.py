from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


def _big_jpeg(path, size=(1600, 2132)):
    """A real photo (the bundled sample) upscaled to a catalogue-like size and saved as a JPEG."""
    sample = sorted((Path(__file__).resolve().parents[1] / "src/clothsim/assets/clothing_sample/test").glob("*/*.jpg"))
    Image.open(sample[0]).convert("RGB").resize(size, Image.BICUBIC).save(path, quality=90)
    return path


def test_reduce_on_decode_keeps_the_short_side_above_the_target(tmp_path):
    path = _big_jpeg(tmp_path / "big.jpg")
    full = load_image(path)
    reduced = load_image(path, min_side=256)
    assert full.size == (1600, 2132)
    assert 256 <= min(reduced.size) < 512 and reduced.size == (400, 533)  # 1/4 scale
    assert load_image(path, min_side=1000).size == (1600, 2132)  # 1/2 would go below 1000
    png = tmp_path / "big.png"
    full.save(png)
    assert load_image(png, min_side=256).size == full.size  # only JPEG has a reduced decode


def test_reduce_on_decode_scales_the_box(tmp_path):
    path = tmp_path / "boxed.jpg"
    img = Image.new("RGB", (1600, 1200), (250, 250, 250))
    img.paste((200, 20, 20), (400, 200, 1200, 1000))  # a red square of 800 px
    img.save(path, quality=95)
    full = load_image(path, bbox=(400, 200, 1200, 1000))
    reduced = load_image(path, bbox=(400, 200, 1200, 1000), min_side=256)
    assert full.size == (800, 800) and reduced.size == (200 * 2, 200 * 2)  # 1/2: 1/4 would be 200 < 256
    assert np.asarray(reduced)[5:-5, 5:-5].mean(axis=(0, 1))[0] > 180  # still only the red square
    # A small box in a big photo is never shrunk below the target.
    small = load_image(path, bbox=(400, 200, 700, 500), min_side=256)
    assert small.size == (300, 300)


def test_reduce_on_decode_keeps_the_vectors(tmp_path):
    from clothsim.encoders.registry import create_encoder

    encoder = create_encoder("efficientnet_lite0", runtime="torch")
    paths = [_big_jpeg(tmp_path / "a.jpg"), _big_jpeg(tmp_path / "b.jpg", size=(2400, 1800))]
    full = encoder.encode_images([load_image(p) for p in paths])
    reduced = encoder.encode_images([load_image(p, min_side=encoder.decode_min_side) for p in paths])
    assert np.sum(full * reduced, axis=1).min() >= 0.999


def test_uris_are_read_through_pyarrow(tmp_path):
    path = _big_jpeg(tmp_path / "remote.jpg", size=(300, 400))
    assert load_image(path.as_uri()).size == load_image(path).size == (300, 400)
    with pytest.raises(FileNotFoundError):
        load_image((tmp_path / "gone.jpg").as_uri())
    with pytest.raises(ImageDecodeError, match="nosuchscheme://bucket/a.jpg"):
        load_image("nosuchscheme://bucket/a.jpg")
