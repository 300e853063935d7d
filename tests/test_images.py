"""The images rule (issue 32, item 4; DECISIONS D33): one decoder (data/sources.py `to_rgb`, behind
`decode_image` for dataset rows and `open_image` for --images) turns every mode into the 8-bit RGB
the processor receives. Each mode is rendered here and the pixels the model would get are checked;
an extreme aspect ratio is refused with the file or row named."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vlm_recipes.data.sources import decode_image, open_image, to_rgb
from vlm_recipes.errors import InputError


def _png_bytes(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=save.pop("format", "PNG"), **save)
    return buffer.getvalue()


def _pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image, dtype=np.int64)


def test_16_bit_grayscale_is_scaled_by_its_bit_depth_not_clipped_to_white(tmp_path):
    """A 16-bit PNG gradient reaches the model as the same gradient in 8 bits (PIL's convert
    clips every value above 255 to white: 99.6% of this gradient)."""
    ramp = (np.arange(256, dtype=np.uint16)[None, :].repeat(8, 0) * 257)  # 0 .. 65535
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)  # uint16: mode I;16
    clipped = np.asarray(Image.open(path).convert("RGB"))  # what the package did before
    assert (clipped == 255).mean() > 0.99
    for decoded in (open_image(path), decode_image(path.read_bytes(), "row 0")):
        got = _pixels(decoded)
        assert np.array_equal(got[..., 0], np.arange(256)[None, :].repeat(8, 0))
        assert (got[..., 0] == got[..., 2]).all()


@pytest.mark.parametrize("mode, value, expected", [
    ("I;16", 32896, 128), ("I;16B", 65535, 255), ("I", 51400, 200), ("I", 77, 77), ("F", 0.5, 128),
    ("F", 200.0, 200), ("L", 9, 9), ("1", 1, 255),
])
def test_every_gray_mode_reaches_the_model_at_its_meaning(mode, value, expected):
    image = Image.new(mode, (6, 4), value)
    assert (_pixels(to_rgb(image)) == expected).all()


def test_cmyk_is_converted_to_its_colours():
    white, red = Image.new("CMYK", (4, 4), (0, 0, 0, 0)), Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    assert (_pixels(decode_image(_png_bytes(white, format="JPEG", quality=100), "row 1")) >= 250).all()
    assert (_pixels(to_rgb(red)) == (255, 0, 0)).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_reach_the_model_as_white_and_opaque_ones_as_drawn(mode):
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent black
    image.paste((0, 0, 200, 255), (0, 0, 4, 8))  # opaque blue left half
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
        image.info["transparency"] = image.getpixel((7, 7))
    decoded = _pixels(decode_image(_png_bytes(image), "row 2"))
    assert (decoded[:, 4:] == 255).all()  # transparent: white, not black
    left = decoded[:, :4]
    assert (left == (left[0, 0])).all() and left[0, 0].max() < 60 + (mode != "LA") * 200
    if mode != "LA":
        assert tuple(left[0, 0]) == (0, 0, 200)


def test_exif_orientation_turns_a_file_upright(tmp_path):
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 10))  # a blue square at the left end
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=100)
    upright = _pixels(open_image(path))
    assert upright.shape[:2] == (30, 10)  # 10 wide, 30 tall as a viewer shows it
    assert upright[2, 5, 2] > 200 and upright[-3, 5, 0] > 200  # blue at the top after the turn


def test_an_extreme_aspect_ratio_is_refused_naming_the_file_and_the_row(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (402, 2), "white").save(path)
    with pytest.raises(InputError, match=r"strip.png.*402x2.*aspect ratio over 200"):
        open_image(path)
    with pytest.raises(InputError, match=r"train row 7: the image is 402x2"):
        decode_image(path.read_bytes(), "train row 7")
    Image.new("RGB", (400, 2), "white").save(path)  # 200: what the processors still resize
    assert open_image(path).size == (400, 2)
