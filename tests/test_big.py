"""Images of more than one 1024 px tile (format version 3): tiled coding, no seams, a corrupt
tile caught at that tile, and the file errors of a big job."""

import numpy as np
import pytest
import torch
from PIL import Image

import vaecodec
from vaecodec import bitstream, codec, weights
from vaecodec.errors import DecodeMismatchError, FormatError


@pytest.fixture(scope="module")
def big(kodim):
    """2 x 2 tiles of real photo content (1300 x 1100)."""
    return kodim(1).convert("RGB").resize((1300, 1100), Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def big_file(big):
    seen = []
    data = vaecodec.encode(big, 60, progress=lambda d, t: seen.append((d, t)))
    return data, seen


def test_more_than_one_tile_is_a_version_3_file_with_one_string_a_tile(big_file):
    data, seen = big_file
    c = bitstream.unpack(data)
    assert c.header.version == 3
    tiles = bitstream.split_tiles(c.y_string, c.header.width, c.header.height)
    assert len(tiles) == 4 and all(len(s) > 100 for _, s in tiles)
    # progress: analysis and coding, every tile, in order, ending at the total
    assert seen == [(i, 8) for i in range(1, 9)]


def test_tiled_decode_is_the_whole_image_synthesis(big, big_file):
    """No seams: the decoded pixels are g_s run on the whole decoded latent at once."""
    data, _ = big_file
    out = np.asarray(vaecodec.decode(data))
    c = bitstream.unpack(data)
    h = c.header
    loaded = weights.load(None)
    m = loaded.model
    tiles = bitstream.split_tiles(c.y_string, h.width, h.height)
    with torch.inference_mode():
        y_hat, crc = m.decompress_tiles([s for _, s in tiles], [c.z_string], h.z_shape,
                                        codec.quality_to_level(h.quality, m.levels),
                                        codec.TILE_LATENTS)
        whole = m.g_s(y_hat).clamp_(0, 1)
    assert crc == h.symbols_crc
    ref = codec._to_uint8(whole, h.height, h.width)
    diff = np.abs(out.astype(int) - ref)
    assert diff.max() <= 1 and diff.mean() < 0.01
    err = out.astype(float) - np.asarray(big)
    psnr = 10 * np.log10(255 ** 2 / np.mean(err ** 2))
    assert psnr > 30


def test_a_corrupt_tile_stops_the_decode_at_that_tile(big_file):
    data, _ = big_file
    c = bitstream.unpack(data)
    h = c.header
    tiles = bitstream.split_tiles(c.y_string, h.width, h.height)
    crc, s = tiles[1]
    tiles[1] = (crc, s[:10] + bytes([s[10] ^ 0x40]) + s[11:])
    bad = bitstream.pack(bitstream.Container(h, bitstream.join_tiles(tiles), c.z_string))
    with pytest.raises((DecodeMismatchError, FormatError), match="tile 2 of 4|corrupt"):
        vaecodec.decode(bad)


def test_hyperprior_weights_keep_version_1(kodim):
    """vaecodec 1.0's weights write what vaecodec 1.0 reads, whatever the size."""
    im = kodim(1).convert("RGB").resize((1100, 300))
    data = vaecodec.encode(im, 30, model=weights.models_dir() / "vaecodec-hyperprior-vr.safetensors")
    assert bitstream.unpack(data).header.version == 1
    assert vaecodec.decode(data).size == im.size


def test_big_job_output_errors(tmp_path, big):
    """Same path in and out, an output that is a directory, a full disk: one line, exit 1,
    and an existing output untouched."""
    import resource
    import signal
    import subprocess
    import sys

    src = tmp_path / "in.png"
    big.save(src)
    vae = tmp_path / "in.vae"

    def cli(*args, limit=None):
        def pre():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        return subprocess.run([sys.executable, "-m", "vaecodec", *args], capture_output=True,
                              text=True, preexec_fn=pre if limit else None)

    before = src.read_bytes()
    r = cli("encode", str(src), "-o", str(src))
    assert r.returncode == 1 and "is the input" in r.stderr and src.read_bytes() == before
    assert cli("encode", str(src), "-o", str(vae)).returncode == 0
    out = tmp_path / "out.png"
    out.write_bytes(b"previous")
    r = cli("decode", str(vae), "-o", str(out), limit=100_000)       # the "disk" fills up
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "cannot write" in r.stderr
    assert "Traceback" not in r.stderr and out.read_bytes() == b"previous"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    r = cli("decode", str(vae), "-o", "/proc/out.png")                 # not writable
    assert r.returncode == 1 and "cannot write" in r.stderr and "Traceback" not in r.stderr
