"""Safe image decoding (data/images/decode.py) on real edge-case files and on bytes made here.

Every file of ../shared/data/image_edge_cases has its expected outcome listed below (converted, or
skipped with a named reason), so a change in behaviour shows up as a failure naming the file.
"""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.images.decode import ImageSettings, ImageSkip, claimed_format, convert, target_size

OK = "ok"
CORRUPT = "corrupt"
TRUNCATED = "truncated"
TOO_MANY_PIXELS = "too_many_pixels"
NOT_IMAGES = {".md", ".txt", ".markdown", ".ijg"}

EXPECTED = {
    # exif_orientation_examples
    "exif_orientation_examples/Landscape_0.jpg": OK,
    "exif_orientation_examples/Landscape_1.jpg": OK,
    "exif_orientation_examples/Landscape_2.jpg": OK,
    "exif_orientation_examples/Landscape_3.jpg": OK,
    "exif_orientation_examples/Landscape_4.jpg": OK,
    "exif_orientation_examples/Landscape_5.jpg": OK,
    "exif_orientation_examples/Landscape_6.jpg": OK,
    "exif_orientation_examples/Landscape_7.jpg": OK,
    "exif_orientation_examples/Landscape_8.jpg": OK,
    "exif_orientation_examples/Portrait_0.jpg": OK,
    "exif_orientation_examples/Portrait_1.jpg": OK,
    "exif_orientation_examples/Portrait_2.jpg": OK,
    "exif_orientation_examples/Portrait_3.jpg": OK,
    "exif_orientation_examples/Portrait_4.jpg": OK,
    "exif_orientation_examples/Portrait_5.jpg": OK,
    "exif_orientation_examples/Portrait_6.jpg": OK,
    "exif_orientation_examples/Portrait_7.jpg": OK,
    "exif_orientation_examples/Portrait_8.jpg": OK,
    # libjpeg_turbo_testimages
    "libjpeg_turbo_testimages/monkey12.jpg": CORRUPT,  # 12-bit JPEG: Pillow reads 8-bit only
    "libjpeg_turbo_testimages/monkey16.png": OK,
    "libjpeg_turbo_testimages/shira_bird8.bmp": OK,
    "libjpeg_turbo_testimages/testimgari.jpg": OK,
    "libjpeg_turbo_testimages/testimgint.jpg": OK,
    "libjpeg_turbo_testimages/testorig.jpg": OK,
    "libjpeg_turbo_testimages/testorig.png": OK,
    # pillow_edge_cases
    "pillow_edge_cases/1_trns.png": OK,
    "pillow_edge_cases/1x1_l.png": OK,
    "pillow_edge_cases/apng_mode_16bit.png": OK,
    "pillow_edge_cases/app13-multiple.jpg": OK,
    "pillow_edge_cases/blend_transparency.png": OK,
    "pillow_edge_cases/bmp_reallybig.bmp": TOO_MANY_PIXELS,
    "pillow_edge_cases/broken.png": CORRUPT,
    "pillow_edge_cases/broken_data_stream.png": OK,
    "pillow_edge_cases/broken_exif_dpi.jpg": OK,
    "pillow_edge_cases/decompression_bomb.gif": TOO_MANY_PIXELS,
    "pillow_edge_cases/decompression_bomb.ico": TOO_MANY_PIXELS,
    "pillow_edge_cases/decompression_bomb_extents.gif": OK,
    "pillow_edge_cases/dispose_bgnd.gif": OK,
    "pillow_edge_cases/exif-ifd-offset.jpg": OK,
    "pillow_edge_cases/exif_imagemagick_orientation.png": OK,
    "pillow_edge_cases/flower.jpg": OK,
    "pillow_edge_cases/flower.webp": OK,
    "pillow_edge_cases/flower2.jpg": OK,
    "pillow_edge_cases/frozenpond.mpo": OK,
    "pillow_edge_cases/hopper.bmp": OK,
    "pillow_edge_cases/hopper.gif": OK,
    "pillow_edge_cases/hopper.jpg": OK,
    "pillow_edge_cases/hopper.png": OK,
    "pillow_edge_cases/hopper.tif": OK,
    "pillow_edge_cases/hopper.webp": OK,
    "pillow_edge_cases/hopper_16bit_qtables.jpg": OK,
    "pillow_edge_cases/hopper_bad_exif.jpg": OK,
    "pillow_edge_cases/hopper_gray.jpg": OK,
    "pillow_edge_cases/hopper_idat_after_image_end.png": OK,
    "pillow_edge_cases/hopper_orientation_2.jpg": OK,
    "pillow_edge_cases/hopper_orientation_3.jpg": OK,
    "pillow_edge_cases/hopper_orientation_4.jpg": OK,
    "pillow_edge_cases/hopper_orientation_5.jpg": OK,
    "pillow_edge_cases/hopper_orientation_6.jpg": OK,
    "pillow_edge_cases/hopper_orientation_6.webp": OK,
    "pillow_edge_cases/hopper_orientation_7.jpg": OK,
    "pillow_edge_cases/hopper_orientation_8.jpg": OK,
    "pillow_edge_cases/i_trns.png": OK,
    "pillow_edge_cases/icc-after-SOF.jpg": OK,
    "pillow_edge_cases/icc_profile_big.jpg": OK,
    "pillow_edge_cases/invalid-exif.jpg": OK,
    "pillow_edge_cases/iptc.jpg": OK,
    "pillow_edge_cases/iss634.gif": OK,
    "pillow_edge_cases/iss634.webp": OK,
    "pillow_edge_cases/jfif_unit_cm.jpg": OK,
    "pillow_edge_cases/jpeg_ff00_header.jpg": OK,
    "pillow_edge_cases/junk_jpeg_header.jpg": OK,
    "pillow_edge_cases/l_trns.png": OK,
    "pillow_edge_cases/multiple_exif.jpg": OK,
    "pillow_edge_cases/orientation_rectangle.jpg": OK,
    "pillow_edge_cases/p_trns_single.png": OK,
    "pillow_edge_cases/pil123p.png": OK,
    "pillow_edge_cases/pil123rgba.png": OK,
    "pillow_edge_cases/pil_sample_cmyk.jpg": OK,
    "pillow_edge_cases/pil_sample_rgb.jpg": OK,
    "pillow_edge_cases/png_decompression_dos.png": CORRUPT,  # zlib bomb in a text chunk
    "pillow_edge_cases/rgb_trns.png": OK,
    "pillow_edge_cases/sugarshack.mpo": OK,
    "pillow_edge_cases/tRNS_null_1x1.png": OK,
    "pillow_edge_cases/tiny.png": OK,
    "pillow_edge_cases/transparent.gif": OK,
    "pillow_edge_cases/transparent.webp": OK,
    "pillow_edge_cases/truncated_app14.jpg": OK,
    "pillow_edge_cases/truncated_end_chunk.png": OK,
    "pillow_edge_cases/truncated_exif_dpi.jpg": OK,
    "pillow_edge_cases/truncated_image.png": TRUNCATED,
    "pillow_edge_cases/truncated_jpeg.jpg": TRUNCATED,
    "pillow_edge_cases/ultrahdr.jpg": TRUNCATED,  # scan data cut in the fixture
    "pillow_edge_cases/uncompressed_la.png": OK,
    "pillow_edge_cases/zero_width.gif": CORRUPT,
    # sharp_fixtures
    "sharp_fixtures/16-bit-grey-alpha.png": OK,
    "sharp_fixtures/2569067123_aca715a2ee_o.jpg": OK,
    "sharp_fixtures/2x2_fdcce6.png": OK,
    "sharp_fixtures/4.webp": OK,
    "sharp_fixtures/5_webp_a.webp": OK,
    "sharp_fixtures/65536-uint32-limit.png": TOO_MANY_PIXELS,  # 65536x65536 header
    "sharp_fixtures/Channel_digital_image_CMYK_color.jpg": OK,
    "sharp_fixtures/Channel_digital_image_CMYK_color_no_profile.jpg": OK,
    "sharp_fixtures/Flag_of_the_Netherlands-16bit.png": OK,
    "sharp_fixtures/animated-loop-3.gif": OK,
    "sharp_fixtures/animated-loop-3.webp": OK,
    "sharp_fixtures/big-height.webp": OK,
    "sharp_fixtures/centered_image.jpeg": OK,
    "sharp_fixtures/concert.jpg": OK,
    # 1 KiB cut from a file with a broken header: Pillow runs out of bytes ("Truncated File Read").
    "sharp_fixtures/corrupt-header.jpg": TRUNCATED,
    "sharp_fixtures/full-transparent.png": OK,
    "sharp_fixtures/gain-map.jpg": OK,
    "sharp_fixtures/gamma_dalai_lama_gray.jpg": OK,
    "sharp_fixtures/giant-image.jpg": TOO_MANY_PIXELS,  # 20000x14000
    "sharp_fixtures/grey-8bit-alpha.png": OK,
    "sharp_fixtures/grey-plus-alpha.gif": OK,
    "sharp_fixtures/pitm.avif": OK,
    "sharp_fixtures/truncated.jpg": TRUNCATED,
    "sharp_fixtures/truncated.png": TRUNCATED,
    "sharp_fixtures/with-alpha.png": OK,
}

EDGE = "image_edge_cases"


def edge_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() not in NOT_IMAGES and "LICENSE" not in p.name)


def outcome(data: bytes, settings: ImageSettings = ImageSettings()) -> str:
    try:
        convert(data, settings)
    except ImageSkip as skip:
        return skip.reason
    return OK


def pixels(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        return np.asarray(image, dtype=np.float64)


def converted(root: Path, name: str) -> np.ndarray:
    return pixels(convert((root / name).read_bytes()).jpeg)


def test_every_edge_case_file_has_an_expected_outcome(shared_data):
    assert edge_files(shared_data / EDGE) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_edge_case_converted_or_skipped_with_its_reason(shared_data, name):
    data = (shared_data / EDGE / name).read_bytes()
    assert outcome(data) == EXPECTED[name]
    if EXPECTED[name] == OK:
        result = convert(data)
        out = pixels(result.jpeg)
        expected = target_size(result.original_size, 288)
        assert sorted(out.shape[1::-1]) == sorted(expected)  # EXIF rotation may swap the sides
        assert min(out.shape[:2]) <= 288


@pytest.mark.parametrize("family", ["Landscape", "Portrait"])
def test_exif_rotated_files_come_out_upright(shared_data, family):
    folder = shared_data / EDGE / "exif_orientation_examples"
    upright = converted(folder, f"{family}_1.jpg")
    for orientation in (0, 2, 3, 4, 5, 6, 7, 8):
        out = converted(folder, f"{family}_{orientation}.jpg")
        assert out.shape == upright.shape, orientation
        # A wrong transpose moves the picture's content: mean differences are then ~50-100.
        assert np.abs(out - upright).mean() < 4, orientation


def test_hopper_orientations_match_the_plain_hopper(shared_data):
    folder = shared_data / EDGE / "pillow_edge_cases"
    plain = converted(folder, "hopper.jpg")
    for orientation in range(2, 9):
        assert np.abs(converted(folder, f"hopper_orientation_{orientation}.jpg") - plain).mean() < 8


def test_cmyk_becomes_the_same_picture_as_rgb(shared_data):
    folder = shared_data / EDGE / "pillow_edge_cases"
    cmyk, rgb = converted(folder, "pil_sample_cmyk.jpg"), converted(folder, "pil_sample_rgb.jpg")
    assert np.abs(cmyk - rgb).mean() < 8  # inverted (Adobe) CMYK would differ by ~100


def test_sixteen_bit_colours_keep_their_top_byte(shared_data):
    flag = converted(shared_data / EDGE / "sharp_fixtures", "Flag_of_the_Netherlands-16bit.png")
    height = flag.shape[0]
    red, white, blue = flag[height // 6, 10], flag[height // 2, 10], flag[5 * height // 6, 10]
    assert red[0] > 150 and red[1] < 60 and red[2] < 70
    assert white.min() > 240
    assert blue[2] > 120 and blue[0] < 60


def test_transparency_is_composited_on_white(shared_data):
    folder = shared_data / EDGE
    assert converted(folder, "sharp_fixtures/full-transparent.png").min() >= 250
    # i_trns.png: 16-bit gray, tRNS marks one exact value (13.6% of the pixels); the rest is dark.
    out = converted(folder, "pillow_edge_cases/i_trns.png")
    assert 0.10 < (out > 250).all(axis=2).mean() < 0.17


def test_animated_gif_gives_its_first_frame(shared_data):
    path = shared_data / EDGE / "sharp_fixtures" / "animated-loop-3.gif"
    with Image.open(path) as image:
        first = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert np.abs(converted(path.parent, path.name) - first).mean() < 4


BOMB_PROBE = r"""
import json, resource, sys
from pathlib import Path
from data.images.decode import ImageSkip, convert
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
reasons = {}
for path in sys.argv[1:]:
    try:
        convert(Path(path).read_bytes())
        reasons[path] = "ok"
    except ImageSkip as skip:
        reasons[path] = skip.reason
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"reasons": reasons, "grew_kib": after - before}))
"""


def _probe(paths: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", BOMB_PROBE, *paths], capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_big_jpeg_is_decoded_at_reduced_dct_scale(tmp_path):
    # 6000x4000 RGB is 72 MB decoded in full; draft mode decodes it at 1/8 (750x500, ~1 MB).
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    path = tmp_path / "big.jpg"
    small.resize((6000, 4000), Image.Resampling.NEAREST).save(path, quality=60)
    probe = _probe([str(path)])
    assert probe["reasons"][str(path)] == OK
    assert probe["grew_kib"] < 40 * 1024


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _jpeg(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def test_pixel_limit_is_checked_from_the_header():
    assert outcome(_png_header(60_000, 60_000)) == TOO_MANY_PIXELS
    assert outcome(_jpeg(64, 64), ImageSettings(max_pixels=64 * 64 - 1)) == TOO_MANY_PIXELS
    assert outcome(_jpeg(64, 64), ImageSettings(max_pixels=64 * 64)) == OK


def test_damaged_bytes_get_named_reasons():
    jpeg = _jpeg(200, 150)
    assert outcome(jpeg[: len(jpeg) // 2]) == TRUNCATED
    assert outcome(b"GIF89a" + b"\x00" * 3) == CORRUPT
    assert outcome(b"this is not an image at all") == "unsupported_format"
    assert outcome(b"") == "unsupported_format"
    assert claimed_format(jpeg) == "JPEG" and claimed_format(b"hello") is None


def _reason(call) -> str:
    try:
        call()
    except ImageSkip as skip:
        return skip.reason
    return OK


@pytest.mark.parametrize("data, reason", [
    (_png_header(60_000, 60_000), TOO_MANY_PIXELS), (b"GIF89a" + b"\x00" * 3, CORRUPT),
    (b"\xff\xd8\xff garbage", CORRUPT), (b"this is not an image at all", "unsupported_format"),
    (b"", "unsupported_format"), (_jpeg(64, 64), TOO_MANY_PIXELS),
], ids=["png-bomb", "gif-stub", "jpeg-garbage", "text", "empty", "jpeg-over-limit"])
def test_every_decoder_of_untrusted_bytes_applies_the_same_guard(data, reason):
    """The shard builder, the loader's CPU and device-decode paths and the near-duplicate tools all
    go through data.images.decode.open_untrusted: the same bytes give the same named skip."""
    from data.images.near_duplicates import altered_copy
    from data.loader.gpu_decode import decode_batch
    from data.loader.transforms import EvalTransform, TrainTransform, header_box

    limit = 64 * 64 - 1
    rng = np.random.default_rng(0)
    reasons = {
        "convert": _reason(lambda: convert(data, ImageSettings(max_pixels=limit))),
        "train": _reason(lambda: TrainTransform(32, max_pixels=limit)(data, rng)),
        "eval": _reason(lambda: EvalTransform(32, 40, max_pixels=limit)(data, rng)),
        "header_box": _reason(lambda: header_box(data, TrainTransform(32, max_pixels=limit), rng)),
    }
    if reason != TOO_MANY_PIXELS or not data.startswith(b"\xff\xd8"):
        # What the device decoder rejects is decoded on the CPU, under the same guard; a valid
        # JPEG is decoded on the device, its size checked by header_box in the worker beforehand.
        skips = decode_batch([data], [(0, 0, 8, 8)], [False], 32, "cpu", max_pixels=limit)[2]
        reasons["device_fallback"] = skips[0].reason if skips else OK
        reasons["altered_copy"] = _reason(lambda: altered_copy(data, 32, 75))  # the default limit
    assert set(reasons.values()) == {reason}, reasons


def test_never_upscales_and_keeps_the_aspect():
    assert pixels(convert(_jpeg(40, 30)).jpeg).shape == (30, 40, 3)
    result = convert(_jpeg(1000, 500), ImageSettings(short_side=100))
    assert pixels(result.jpeg).shape == (100, 200, 3)
    assert result.original_size == (1000, 500)
    assert target_size((289, 1000), 288) == (288, 997)


def test_quality_setting_changes_the_encoding():
    data = _jpeg(300, 300)
    assert len(convert(data, ImageSettings(quality=30)).jpeg) < len(convert(data, ImageSettings(quality=95)).jpeg)


@pytest.mark.parametrize("bad", [dict(short_side=0), dict(quality=101), dict(max_pixels=0),
                                 dict(max_pixels=10**12), dict(resample="cubic")])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        ImageSettings(**bad)
