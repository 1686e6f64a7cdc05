"""The network: a variable-rate mean-scale hyperprior.

Minnen, Ballé, Toderici, "Joint Autoregressive and Hierarchical Priors for Learned Image
Compression" (NeurIPS 2018), without the autoregressive context, so that decoding stays one
parallel pass. The transforms are Ballé et al. 2018's (GDN, 5x5 stride-2 convolutions).

One set of weights covers every rate through gain units (Cui et al., "Asymmetric Gained Deep
Image Compression With Continuous Rate Adaptation", CVPR 2021): a per-channel gain scales the
latent before quantization and an inverse gain undoes it afterwards. Gains are stored as logs
per trained rate level and interpolated linearly in log space, so any real ``level`` between
0 and ``levels - 1`` is a valid rate.

Dataflow (``g`` = gain, ``g'`` = inverse gain at the chosen level)::

    x -> g_a -> y --------------------------*g_y-> y_g -> Q -> [GC] -> y_hat_g *g'_y -> g_s -> x_hat
               |                                   ^                ^
               +-> h_a -> z *g_z -> Q -> [EB] -> *g'_z -> h_s -> (scales, means) *g_y

The hyper-synthesis predicts the distribution of the *unscaled* latent; scaling a Gaussian by
``g_y`` scales its mean and standard deviation by ``g_y``, so h_s does not have to know the rate.
"""

from __future__ import annotations

import math
import warnings
import zlib
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

# CompressAI 1.2.8 calls torch.jit.script at import; torch 2.14 warns about it on every run.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")

from ._compressai import GDN, EntropyBottleneck, GaussianConditional, conv, deconv

from .context import ELIC_GROUPS, CheckerboardContext, GroupedCheckerboardContext, anchor_mask
from .intnet import (FRAC_BITS, IntegerContext, IntegerGroupedContext, IntegerHyperSynthesis, gains_fixed,
                     scale_indexes, scale_thresholds)
from .rdoq import rd_round

SCALES_MIN, SCALES_MAX, SCALES_LEVELS = 0.11, 256.0, 64

#: Pixels per y latent (g_a downsamples 4 times by 2).
Y_STRIDE = 16
#: Transforms run in tiles of TILE x TILE latents (1024 x 1024 pixels), so memory stays bounded
#: for any image size; smaller images run whole.
TILE = 64
#: Halo in latents. g_a's receptive field reaches 30 pixels from a latent's own 16 x 16 block
#: (5x5 stride-2 convolutions: 2 + 4 + 8 + 16), so a 2-latent halo makes every kept latent
#: exactly the whole-image one. g_s reaches under 2 latents; 3 leaves margin.
HALO_ANALYSIS, HALO_SYNTHESIS = 2, 3
#: The integer hyper-synthesis runs in tiles of Z_TILE x Z_TILE hyper-latents (1024 x 1024
#: pixels) too: in float64 its 3x3 convolution's unfold buffer alone would take ~2 GB at
#: 24 MP. Its arithmetic is exact integers, so tiles give bit-identical results; it reaches
#: about one hyper-latent (two 5x5 stride-2 deconvolutions, one 3x3 convolution).
Z_TILE, HALO_HYPER = 16, 2

#: The lambdas (in lambda * 255^2 * MSE + bpp) of the trained rate levels: a geometric grid.
#: It reaches below CompressAI's lowest (0.0018) and above its highest (0.0932) lambda because
#: one set of transforms serving every rate is weaker at the ends than eight separate models,
#: and the ends must still reach ~0.12 and ~1.6 bpp on Kodak. (0.0004 ... 0.13 until
#: 2026-11-26 reached only 1.53 bpp at the top; the shipped weights carry their own grid.)
DEFAULT_LAMBDAS = tuple(float(0.0005 * (0.16 / 0.0005) ** (i / 9)) for i in range(10))


def scale_table() -> Tensor:
    return torch.exp(torch.linspace(math.log(SCALES_MIN), math.log(SCALES_MAX), SCALES_LEVELS))


class VariableRateHyperprior(nn.Module):
    """Mean-scale hyperprior with gain units; see the module docstring for the dataflow."""

    #: The container's name for how this model codes y (bitstream.LATENT_CODECS).
    LATENT_CODEC = "hyperprior"

    def __init__(self, N: int = 128, M: int = 192, lambdas: tuple[float, ...] = DEFAULT_LAMBDAS):
        super().__init__()
        self.N, self.M = N, M
        self.g_a = nn.Sequential(
            conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M)
        )
        self.g_s = nn.Sequential(
            deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
            deconv(N, N), GDN(N, inverse=True), deconv(N, 3),
        )
        self.h_a = nn.Sequential(
            conv(M, N, stride=1, kernel_size=3), nn.LeakyReLU(inplace=True),
            conv(N, N), nn.LeakyReLU(inplace=True), conv(N, N),
        )
        self.h_s = nn.Sequential(
            deconv(N, M), nn.LeakyReLU(inplace=True),
            deconv(M, M * 3 // 2), nn.LeakyReLU(inplace=True),
            conv(M * 3 // 2, M * 2, stride=1, kernel_size=3),
        )
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)
        L = len(lambdas)
        self.register_buffer("lambdas", torch.tensor(lambdas, dtype=torch.float32))
        # log-gains: positive by construction, and exponential interpolation becomes linear.
        self.y_log_gain = nn.Parameter(torch.zeros(L, M))
        self.y_log_gain_inv = nn.Parameter(torch.zeros(L, M))
        self.z_log_gain = nn.Parameter(torch.zeros(L, N))
        self.z_log_gain_inv = nn.Parameter(torch.zeros(L, N))

    @property
    def levels(self) -> int:
        return self.lambdas.numel()

    def init_gains(self, reference_lambda: float) -> None:
        """Start each level's gain at sqrt(lambda / lambda_ref): at high rate the optimal
        quantization step scales with 1/sqrt(lambda), so a single-rate model trained at
        ``reference_lambda`` is already a fair variable-rate model before any training."""
        with torch.no_grad():
            lg = 0.5 * torch.log(self.lambdas / reference_lambda)
            self.y_log_gain.copy_(lg[:, None].expand_as(self.y_log_gain))
            self.y_log_gain_inv.copy_(-lg[:, None].expand_as(self.y_log_gain_inv))

    def regrid(self, old_lambdas: Tensor, tables: dict[str, Tensor]) -> None:
        """Gains trained on another lambda grid -> this model's grid: interpolate the log-gains
        in log-lambda, and beyond the old ends extend the y gains as sqrt(lambda) (the
        high-rate optimum) while z keeps the end gains. Lets a new grid start from trained
        weights instead of from scratch."""
        old = torch.log(old_lambdas.double())
        new = torch.log(self.lambdas.double())
        inside = new.clamp(old[0], old[-1])
        i = (torch.searchsorted(old, inside, right=True) - 1).clamp(0, len(old) - 2)
        t = ((inside - old[i]) / (old[i + 1] - old[i]))[:, None]
        beyond = (new - new.clamp(old[0], old[-1]))[:, None]
        with torch.no_grad():
            for name, sign in (("y_log_gain", 0.5), ("y_log_gain_inv", -0.5),
                               ("z_log_gain", 0.0), ("z_log_gain_inv", 0.0)):
                tab = tables[name].double()
                val = (1 - t) * tab[i] + t * tab[i + 1] + sign * beyond
                getattr(self, name).copy_(val.float())

    # -- rate levels ---------------------------------------------------------------------

    def _interp(self, table: Tensor, level: Tensor) -> Tensor:
        """Gains for continuous levels (shape [B]) -> [B, C, 1, 1]."""
        level = level.clamp(0, self.levels - 1)
        i = level.floor().clamp(max=self.levels - 2).long()
        t = (level - i.to(level.dtype))[:, None]
        log_g = (1 - t) * table[i] + t * table[i + 1]
        return torch.exp(log_g)[:, :, None, None]

    def lambda_at(self, level: Tensor) -> Tensor:
        """Lambda for continuous levels, geometric between the trained ones."""
        level = level.clamp(0, self.levels - 1)
        i = level.floor().clamp(max=self.levels - 2).long()
        t = level - i.to(level.dtype)
        ll = torch.log(self.lambdas)
        return torch.exp((1 - t) * ll[i] + t * ll[i + 1])

    def gains(self, level: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (
            self._interp(self.y_log_gain, level),
            self._interp(self.y_log_gain_inv, level),
            self._interp(self.z_log_gain, level),
            self._interp(self.z_log_gain_inv, level),
        )

    # -- training ------------------------------------------------------------------------

    def forward(self, x: Tensor, level: Tensor, autocast: bool = False,
                rate: str = "noise") -> dict[str, Any]:
        """Training pass: straight-through rounding ``round(y - mu) + mu`` into the synthesis
        (no train/test mismatch for g_s); y's rate term from uniform noise or, with
        ``rate="ste"`` or ``"mixed"``, from the rounded symbols the coder will pay for
        (``_y_likelihoods`` says how each passes gradients)."""
        y, scales, means, z_likelihoods, (gy, gy_inv) = self._train_prior(x, level, autocast)
        y_g, scales_g, means_g = y * gy, scales * gy, means * gy
        y_hat_g = y_g + (torch.round(y_g - means_g) + means_g - y_g).detach()
        y_likelihoods = self._y_likelihoods(y_g, y_hat_g, scales_g, means_g, rate)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            x_hat = self.g_s(y_hat_g * gy_inv)
        return {"x_hat": x_hat.float(), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def _train_prior(self, x: Tensor, level: Tensor, autocast: bool
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, Tensor]]:
        """The training pass up to the hyperprior: y, h_s's ungained (scales, means), z's
        likelihoods and the y gains; shared by both models' ``forward``."""
        gy, gy_inv, gz, gz_inv = self.gains(level)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            y = self.g_a(x)
        y = y.float()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z.float() * gz)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            params = self.h_s(z_hat * gz_inv)
        scales, means = params.float().chunk(2, 1)
        return y, scales, means, z_likelihoods, (gy, gy_inv)

    def _y_likelihoods(self, y_g: Tensor, y_hat_g: Tensor, scales_g: Tensor, means_g: Tensor,
                       rate: str) -> Tensor:
        """Noise: the usual relaxation, which overprices symbols of small scale (a residual
        that rounds to 0 costs almost nothing, the same plus noise up to 1/2 costs a lot).
        "ste": the likelihood of the rounded symbol, its gradient passed straight through."""
        gc = self.gaussian_conditional

        def bound(lik: Tensor) -> Tensor:
            return gc.likelihood_lower_bound(lik) if gc.use_likelihood_bound else lik

        if rate == "noise":
            return gc(y_g, scales_g, means=means_g)[1]
        if rate == "ste":
            return bound(gc._likelihood(y_hat_g, scales_g, means_g))
        if rate != "mixed":
            raise ValueError(f"rate term {rate!r}: 'noise', 'ste' or 'mixed'")
        # "mixed": the value is the rounded symbols' likelihood, and so is the gradient
        # that reaches the entropy parameters (they learn the distribution they will code);
        # y's own gradient is the noise relaxation's (smooth, where rounding's is not).
        rounded = bound(gc._likelihood(y_hat_g.detach(), scales_g, means_g))
        noisy = bound(gc._likelihood(gc.quantize(y_g, "noise"), scales_g.detach(),
                                     means_g.detach()))
        return rounded * (noisy / noisy.detach())

    def aux_loss(self) -> Tensor:
        return self.entropy_bottleneck.loss()

    # -- coding --------------------------------------------------------------------------
    #
    # compress/decompress compute the entropy coder's inputs (CDF indexes of y, and its means)
    # from z with the integer hyper-synthesis (intnet.py), so they are the same bits on any
    # machine; ``integer=False`` keeps the float path as a control. Both return/check a CRC32
    # of the y symbols, so a desynchronised decode is detected instead of written out.

    def update(self) -> None:
        """Build the integer CDF tables; done once at export, never at load time."""
        self.entropy_bottleneck.update(force=True)
        self.gaussian_conditional.update_scale_table(scale_table(), force=True)
        self._coding_cache = None

    def _cache(self) -> dict[str, Any]:
        cache = getattr(self, "_coding_cache", None)
        if cache is None:
            gc = self.gaussian_conditional
            cache = self._coding_cache = {
                "cdf": gc._quantized_cdf.tolist(),
                "cdf_length": gc._cdf_length.reshape(-1).int().tolist(),
                "offset": gc._offset.reshape(-1).int().tolist(),
                "int_h_s": IntegerHyperSynthesis(self.h_s),
                "thresholds": scale_thresholds(gc.scale_table),
            }
        return cache

    def _y_params(self, z_hat_g: Tensor, level: float, integer: bool) -> tuple[Tensor, Tensor]:
        """CDF indexes and means of the gained y, from the decoded (gained) z, on the CPU."""
        return self._index(*self._hyper(z_hat_g, level, integer), level, integer)

    def _hyper(self, z_hat_g: Tensor, level: float, integer: bool) -> tuple[Tensor, Tensor]:
        """h_s's ungained (scales, means) of y: integers on the 2^-12 grid (float64) on the
        integer path, floats on the float control."""
        zg = self._z_grid(z_hat_g, level, integer)
        if integer:
            return tiled(self._cache()["int_h_s"], zg, Z_TILE, HALO_HYPER, down=1, up=4
                         ).chunk(2, 1)
        return self.h_s.cpu()(zg).chunk(2, 1)

    def _z_grid(self, z_hat_g: Tensor, level: float, integer: bool) -> Tensor:
        """h_s's input, the ungained z: on the integer grid (float64) on the integer path."""
        z_hat_g = z_hat_g.cpu()
        if integer:
            gz_inv, _ = gains_fixed(self.z_log_gain_inv, level)
            x = z_hat_g.double() * torch.tensor(gz_inv, dtype=torch.float64).view(1, -1, 1, 1)
            return IntegerHyperSynthesis.to_grid(x)
        lv = torch.full((z_hat_g.size(0),), float(level))
        return z_hat_g * self.gains(lv)[3].cpu()

    def _hyper_tile(self, zg: Tensor, integer: bool, t0: int, t1: int, s0: int, s1: int
                    ) -> tuple[Tensor, Tensor]:
        """``_hyper``'s (scales, means) for y rows t0:t1 and columns s0:s1 only, from the
        z grid around them (HALO_HYPER more on every side): with a tile that is a multiple of
        Z_TILE z latents these are exactly ``_hyper``'s own windows, so the integers are the
        whole image's to the bit."""
        zh, zw = zg.shape[-2:]
        a0, a1 = max(0, t0 // 4 - HALO_HYPER), min(zh, -(-t1 // 4) + HALO_HYPER)
        b0, b1 = max(0, s0 // 4 - HALO_HYPER), min(zw, -(-s1 // 4) + HALO_HYPER)
        f = self._cache()["int_h_s"] if integer else self.h_s.cpu()
        p = f(zg[..., a0:a1, b0:b1])
        return p[..., t0 - 4 * a0:t1 - 4 * a0, s0 - 4 * b0:s1 - 4 * b0].chunk(2, 1)

    def _index(self, scales: Tensor, means: Tensor, level: float, integer: bool,
               channels: slice = slice(None)) -> tuple[Tensor, Tensor]:
        """Ungained (scales, means) from ``_hyper`` -> the coder's CDF indexes and the gained
        means: an exact integer comparison on the integer path. ``channels``: which of the
        latent's channels the arguments hold (a channel group)."""
        if integer:
            gy, gy_int = gains_fixed(self.y_log_gain, level)
            gy, gy_int = gy[channels], gy_int[channels]
            indexes = scale_indexes(scales, gy_int, self._cache()["thresholds"])
            gyt = torch.tensor(gy, dtype=torch.float64).view(1, -1, 1, 1)
            return indexes, (means * 2.0 ** -FRAC_BITS * gyt).float()
        lv = torch.full((scales.size(0),), float(level))
        gy = self.gains(lv)[0].cpu()[:, channels]
        return self.gaussian_conditional.build_indexes(scales * gy), means * gy

    def analyze(self, x: Any, tile: int | None = None, tick: Callable[[], None] | None = None
                ) -> tuple[Tensor, Tensor]:
        """The rate-independent part of encoding: y = g_a(x) and the ungained z = h_a(y).
        Rate control calls it once and then ``compress_latent`` per try. ``x``: a tensor,
        or anything with a ``shape`` and a ``window`` (see ``tiled``)."""
        def g_a(t: Tensor) -> Tensor:
            return self.g_a(t.contiguous(memory_format=torch.channels_last))  # see fastpath.py

        y = tiled(g_a, x, tile or TILE, HALO_ANALYSIS, down=Y_STRIDE, up=1, tick=tick)
        return y, tiled(self.h_a, y, Z_TILE, HALO_HYPER, down=4, up=1)

    def compress_latent(self, y: Tensor, z: Tensor, level: float, integer: bool = True,
                        rdoq: bool = True) -> dict[str, Any]:
        """(y, ungained z) at one rate level -> z and y strings, z's shape, the y symbols'
        CRC32, and ``y_hat`` (the decoder's ungained latent, for measuring distortion).
        ``rdoq``: rate-distortion optimised rounding (rdoq.py) instead of nearest."""
        from ._compressai import RansEncoder

        z_strings, indexes, means_g = self.code_z(z, level, integer)
        gy, _ = gains_fixed(self.y_log_gain, level)
        y_g = y.float().cpu() * torch.tensor(gy, dtype=torch.float32).view(1, -1, 1, 1)
        if rdoq:
            gc = self.gaussian_conditional
            symbols = rd_round(y_g - means_g, gc.scale_table.cpu()[indexes.long()],
                               self.lambda_for(level), gc)
        else:
            symbols = torch.round(y_g - means_g).int()
        c = self._cache()
        y_string = RansEncoder().encode_with_indexes(
            symbols.reshape(-1).tolist(), indexes.reshape(-1).tolist(), c["cdf"],
            c["cdf_length"], c["offset"])
        return {"strings": [[y_string], z_strings], "shape": tuple(z.shape[-2:]),
                "symbols_crc": symbols_crc(symbols),
                "y_hat": self._ungain(symbols, means_g, level)}

    def code_z(self, z: Tensor, level: float, integer: bool = True
               ) -> tuple[list[bytes], Tensor, Tensor]:
        """Ungained z -> its strings, and the CDF indexes and means of the gained y that the
        decoder will derive from them (the encoder's search needs exactly the decoder's view)."""
        lv = torch.full((z.size(0),), float(level), device=z.device)
        _, _, gz, _ = self.gains(lv)
        z = z * gz
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat_g = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        return (z_strings, *self._y_params(z_hat_g, level, integer))

    def lambda_for(self, level: float) -> float:
        return float(self.lambda_at(torch.tensor([float(level)], device=self.lambdas.device)))

    def compress(self, x: Tensor, level: float, integer: bool = True, rdoq: bool = True
                 ) -> dict[str, Any]:
        """One image (batch of 1) -> see ``compress_latent``."""
        return self.compress_latent(*self.analyze(x), level, integer, rdoq)

    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int], level: float,
                   integer: bool = True, device: torch.device | None = None,
                   synthesis: Any = None) -> tuple[Tensor, int]:
        """Strings -> (x_hat in [0, 1], CRC32 of the decoded y symbols): the caller compares
        the CRC with the one the encoder stored before trusting x_hat. ``synthesis``: a
        context (e.g. an autocast) for g_s alone, never for the entropy coder's inputs."""
        import contextlib

        import numpy as np
        from ._compressai import RansDecoder

        z_hat_g = self.entropy_bottleneck.decompress(strings[1], tuple(shape))
        indexes, means_g = self._y_params(z_hat_g, level, integer)
        c = self._cache()
        decoded = RansDecoder().decode_with_indexes(
            strings[0][0], indexes.reshape(-1).tolist(), c["cdf"], c["cdf_length"], c["offset"])
        # numpy reads a list of ints ~2.5x faster than torch.tensor does
        symbols = torch.from_numpy(np.asarray(decoded, dtype=np.int32)).view_as(indexes)
        y_hat = self._ungain(symbols, means_g, level)
        with synthesis or contextlib.nullcontext():
            x_hat = self.synthesize(y_hat, device)
        return x_hat.float(), symbols_crc(symbols)

    def synthesize(self, y_hat: Tensor, device: torch.device | None = None,
                   tile: int | None = None,
                   sink: Callable[[Tensor, int, int, int, int], None] | None = None,
                   tick: Callable[[], None] | None = None) -> Tensor | None:
        """g_s in tiles, clamped to [0, 1]; with ``sink`` (see ``tiled``) each tile goes there
        instead of into a whole-image float tensor."""
        dev = device or next(self.g_s.parameters()).device

        def g_s(t: Tensor) -> Tensor:
            return self.g_s(t.to(dev).contiguous(memory_format=torch.channels_last)).clamp_(0, 1)

        return tiled(g_s, y_hat, tile or TILE, HALO_SYNTHESIS, down=1, up=Y_STRIDE, sink=sink,
                     tick=tick)

    def _ungain(self, symbols: Tensor, means_g: Tensor, level: float,
                channels: slice = slice(None)) -> Tensor:
        gy_inv, _ = gains_fixed(self.y_log_gain_inv, level)
        return (symbols.float() + means_g) * torch.tensor(gy_inv[channels],
                                                          dtype=torch.float32).view(1, -1, 1, 1)

    # -- coding in tiles -----------------------------------------------------------------
    #
    # For big images (format version 3): y is coded in square tiles of ``tile`` latents,
    # each its own rANS string, so that the symbols, CDF indexes and params that CompressAI's
    # coder takes as Python lists exist for one tile at a time instead of the whole image
    # (~36 bytes per symbol and list: ~1.3 GB at 24 MP). A tile's context sees that tile alone
    # (zeros beyond its edges, as at an image's), so tiles decode independently; the
    # hyperprior's params come from z with a halo (exact integers, the whole image's). A
    # single tile is the whole image: the same symbols and bytes as ``compress_latent``.

    def _code_passes(self, scales_h: Tensor, means_h: Tensor, level: float, integer: bool,
                     code: Callable[[slice, Tensor, Tensor, Tensor, Tensor | None], Tensor]
                     ) -> tuple[Tensor, Tensor]:
        """The passes of one tile in coding order (see GroupedCheckerboardHyperprior.
        _code_groups for ``code``): here one, every latent with the hyperprior's params."""
        idx, mu = self._index(scales_h, means_h, level, integer)
        return code(slice(None), torch.ones(idx.shape, dtype=torch.bool), idx, mu, None), mu

    def _z_for_tiles(self, z_strings: list[bytes], shape: tuple[int, int], level: float,
                     integer: bool) -> Tensor:
        return self._z_grid(self.entropy_bottleneck.decompress(z_strings, tuple(shape)), level,
                            integer)

    def compress_tiles(self, y: Tensor, z: Tensor, level: float, tile: int,
                       integer: bool = True, rdoq: bool = True, y_hat: bool = True,
                       tick: Callable[[], None] | None = None) -> dict[str, Any]:
        """(y, ungained z) -> one y string per tile (raster order), z's strings and shape,
        each tile's symbols CRC32 and that of all symbols in tile order, and ``y_hat``
        (the decoder's latent; None without ``y_hat``, which saves its memory)."""
        from ._compressai import BufferedRansEncoder

        lv = torch.full((z.size(0),), float(level), device=z.device)
        z = z * self.gains(lv)[2]
        z_strings = self.entropy_bottleneck.compress(z)
        zg = self._z_for_tiles(z_strings, z.shape[-2:], level, integer)
        gy, _ = gains_fixed(self.y_log_gain, level)
        gyt = torch.tensor(gy, dtype=torch.float32).view(1, -1, 1, 1)
        cache = self._cache()
        out = torch.empty(y.shape, dtype=torch.float32) if y_hat else None
        strings, crcs, crc = [], [], 0
        for t0, t1, s0, s1, *_ in windows(*y.shape[-2:], tile, 0):
            y_g = y[..., t0:t1, s0:s1].float().cpu() * gyt
            enc = BufferedRansEncoder()

            def code(c: slice, part: Tensor, idx: Tensor, mu: Tensor, sym: Tensor | None,
                     y_g: Tensor = y_g, enc: Any = enc) -> Tensor:
                ip = idx[part]
                s = self._round((y_g[:, c] - mu)[part], ip, level, rdoq)
                enc.encode_with_indexes(s.tolist(), ip.tolist(), cache["cdf"],
                                        cache["cdf_length"], cache["offset"])
                res = torch.zeros(idx.shape, dtype=torch.int32) if sym is None else sym.clone()
                res[part] = s
                return res

            sym, means_g = self._code_passes(*self._hyper_tile(zg, integer, t0, t1, s0, s1),
                                             level, integer, code)
            strings.append(enc.flush())
            raw = sym.numpy().astype("<i4").tobytes()
            crcs.append(zlib.crc32(raw))
            crc = zlib.crc32(raw, crc)
            if out is not None:
                out[..., t0:t1, s0:s1] = self._ungain(sym, means_g, level)
            if tick is not None:
                tick()
        return {"strings": [strings, z_strings], "shape": tuple(z.shape[-2:]),
                "tile_crcs": crcs, "symbols_crc": crc, "y_hat": out}

    def decompress_tiles(self, strings: list[bytes], z_strings: list[bytes],
                         shape: tuple[int, int], level: float, tile: int, integer: bool = True,
                         done: Callable[[int, int], None] | None = None) -> tuple[Tensor, int]:
        """Tile strings (raster order) and z's -> (y_hat, CRC32 of all symbols in tile
        order). ``done(i, crc)`` hears each tile's symbols CRC as soon as it is decoded, so a
        corrupt tile can stop the decode there instead of after the whole image."""
        import numpy as np
        from ._compressai import RansDecoder

        zg = self._z_for_tiles(z_strings, shape, level, integer)
        cache = self._cache()
        H, W = 4 * shape[0], 4 * shape[1]
        y_hat = torch.empty((1, self.M, H, W), dtype=torch.float32)
        crc = 0
        for i, (t0, t1, s0, s1, *_) in enumerate(windows(H, W, tile, 0)):
            dec = RansDecoder()
            dec.set_stream(strings[i])

            def code(c: slice, part: Tensor, idx: Tensor, mu: Tensor, sym: Tensor | None,
                     dec: Any = dec) -> Tensor:
                res = torch.zeros(idx.shape, dtype=torch.int32) if sym is None else sym.clone()
                got = dec.decode_stream(idx[part].tolist(), cache["cdf"], cache["cdf_length"],
                                        cache["offset"])
                res[part] = torch.from_numpy(np.asarray(got, dtype=np.int32))
                return res

            sym, means_g = self._code_passes(*self._hyper_tile(zg, integer, t0, t1, s0, s1),
                                             level, integer, code)
            raw = sym.numpy().astype("<i4").tobytes()
            crc = zlib.crc32(raw, crc)
            if done is not None:
                done(i, zlib.crc32(raw))
            y_hat[..., t0:t1, s0:s1] = self._ungain(sym, means_g, level)
        return y_hat, crc



def windows(H: int, W: int, tile: int, halo: int
            ) -> Iterator[tuple[int, int, int, int, int, int, int, int]]:
    """The tiles of an H x W latent grid in raster order: (t0, t1, s0, s1) the kept rows and
    columns, (a0, a1, b0, b1) the same with ``halo`` latents of context on every side that is
    not an image border."""
    for t0 in range(0, H, tile):
        t1 = min(H, t0 + tile)
        a0, a1 = max(0, t0 - halo), min(H, t1 + halo)
        for s0 in range(0, W, tile):
            s1 = min(W, s0 + tile)
            yield t0, t1, s0, s1, a0, a1, max(0, s0 - halo), min(W, s1 + halo)


def tiled(f: Callable[[Tensor], Tensor], x: Tensor, tile: int, halo: int, down: int, up: int,
          sink: Callable[[Tensor, int, int, int, int], None] | None = None,
          tick: Callable[[], None] | None = None) -> Tensor | None:
    """f(x) computed tile by tile on the latent grid, each tile with ``halo`` latents of real
    context on every side that is not an image border, then cropped and stitched: the same
    result as f(x) (up to float summation order) in bounded memory, with no seams.

    Tiles are counted in latents: ``down`` input pixels and ``up`` output pixels per latent
    (16 and 1 for g_a, 1 and 16 for g_s). ``x`` may instead be a source of windows, with a
    ``shape`` and ``window(row0, row1, col0, col1)``, so that the whole input need not exist
    in f's precision either. ``sink(part, row0, row1, col0, col1)`` takes each cropped tile
    (output units) instead of a stitched result, so that the whole output need not;
    ``tick`` is called after every tile (progress)."""
    H, W = x.shape[-2] // down, x.shape[-1] // down  # latent grid size
    get = getattr(x, "window", None) or (lambda r0, r1, c0, c1: x[..., r0:r1, c0:c1])
    out = None
    for t0, t1, s0, s1, a0, a1, b0, b1 in windows(H, W, tile, halo):
        part = f(get(a0 * down, a1 * down, b0 * down, b1 * down))
        if (a0, a1, b0, b1) != (t0, t1, s0, s1):
            part = part[..., (t0 - a0) * up:(t1 - a0) * up, (s0 - b0) * up:(s1 - b0) * up]
        if sink is not None:
            sink(part, t0 * up, t1 * up, s0 * up, s1 * up)
        elif (t0, t1, s0, s1) == (0, H, 0, W):
            out = part
        else:
            if out is None:
                out = part.new_empty(x.shape[0], part.shape[1], H * up, W * up)
            out[..., t0 * up:t1 * up, s0 * up:s1 * up] = part
        if tick is not None:
            tick()
    return out


def symbols_crc(symbols: Tensor) -> int:
    """CRC32 of the symbols as little-endian int32, the same on every machine."""
    return zlib.crc32(symbols.cpu().numpy().astype("<i4").tobytes())


class CheckerboardHyperprior(VariableRateHyperprior):
    """vaecodec 2: the same transforms and hyperprior, with a checkerboard context for y.

    He et al., "Checkerboard Context Model for Efficient Learned Image Compression" (CVPR
    2021); see context.py for the context network and its dataflow. y is coded in two
    passes of one rANS stream: the anchors ((row + column) even) with the hyperprior's
    params, exactly as vaecodec 1 codes every latent, then the non-anchors with params
    refined from the decoded anchors::

        z_hat -> h_s -> (scales_h, means_h) -> anchors: Q -> [GC] -> anchors' y_hat
                              |                                         |
                              +------------> context <------------------+
                                                |
                                 non-anchors: Q -> [GC] -> y_hat -> g_s -> x_hat

    Both hyper-synthesis and context run as integer networks (intnet.py) when coding.
    """

    LATENT_CODEC = "checkerboard"

    def __init__(self, N: int = 128, M: int = 192, lambdas: tuple[float, ...] = DEFAULT_LAMBDAS,
                 ctx: int = 128, hidden: int = 256, kernel: int = 5):
        super().__init__(N, M, lambdas)
        self.context = CheckerboardContext(M, ctx, hidden, kernel)

    def forward(self, x: Tensor, level: Tensor, autocast: bool = False,
                rate: str = "noise") -> dict[str, Any]:
        """Joint training pass: as the parent's, with the non-anchors' likelihoods from the
        context, which sees the anchors as the decoder will (rounded around their means)."""
        y, scales_h, means_h, z_likelihoods, (gy, gy_inv) = self._train_prior(x, level, autocast)
        mask = anchor_mask(*y.shape[-2:], device=y.device)
        y_g = y * gy
        y_hat_g = y_g + (torch.round(y_g - means_h * gy) + means_h * gy - y_g).detach()
        scales_c, means_c = self.context(y_hat_g * gy_inv * mask, scales_h, means_h, gy_inv)
        scales = scales_h * mask + scales_c * (1 - mask)
        means = means_h * mask + means_c * (1 - mask)
        y_hat_g = y_g + (torch.round(y_g - means * gy) + means * gy - y_g).detach()
        y_likelihoods = self._y_likelihoods(y_g, y_hat_g, scales * gy, means * gy, rate)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            x_hat = self.g_s(y_hat_g * gy_inv)
        return {"x_hat": x_hat.float(), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def _cache(self) -> dict[str, Any]:
        cache = super()._cache()
        if "int_context" not in cache:
            cache["int_context"] = IntegerContext(self.context)
        return cache

    def _context(self, anchors: Tensor, scales_h: Tensor, means_h: Tensor, level: float,
                 integer: bool) -> tuple[Tensor, Tensor]:
        """The non-anchors' ungained (scales, means) from the decoded ungained anchors
        (zero elsewhere): integers on the 2^-12 grid on the integer path, in tiles (exact,
        so the tiles give the whole-image result to the bit)."""
        M = self.M
        if integer:
            gy_inv, _ = gains_fixed(self.y_log_gain_inv, level)
            step = IntegerHyperSynthesis.to_grid(torch.tensor(gy_inv).view(1, -1, 1, 1))
            f = self._cache()["int_context"]
            # the context reaches kernel // 2 latents; an even halo (and TILE) keeps every
            # tile's checkerboard in phase with the whole grid's
            halo = 2 * -(-(self.context.kernel // 2) // 2)
            a = IntegerHyperSynthesis.to_grid(anchors)
            both = tiled(lambda t: torch.cat(f(t[:, :M], t[:, M:2 * M], t[:, 2 * M:], step), 1),
                         torch.cat([a, scales_h, means_h], 1), TILE, halo, down=1, up=1)
            return both.chunk(2, 1)
        lv = torch.full((anchors.size(0),), float(level))
        step = self.gains(lv)[1].cpu()
        return self.context.cpu()(anchors.float(), scales_h.float(), means_h.float(), step)

    def compress_latent(self, y: Tensor, z: Tensor, level: float, integer: bool = True,
                        rdoq: bool = True) -> dict[str, Any]:
        from ._compressai import BufferedRansEncoder

        lv = torch.full((z.size(0),), float(level), device=z.device)
        z = z * self.gains(lv)[2]
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat_g = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        scales_h, means_h = self._hyper(z_hat_g, level, integer)
        idx_h, mu_h = self._index(scales_h, means_h, level, integer)
        gy, _ = gains_fixed(self.y_log_gain, level)
        y_g = y.float().cpu() * torch.tensor(gy, dtype=torch.float32).view(1, -1, 1, 1)
        mask = anchor_mask(*y.shape[-2:]).bool().expand_as(y_g)
        sym = self._round(y_g - mu_h, idx_h, level, rdoq)
        anchors = self._ungain(sym, mu_h, level) * mask
        idx_c, mu_c = self._index(*self._context(anchors, scales_h, means_h, level, integer),
                                  level, integer)
        sym = torch.where(mask, sym, self._round(y_g - mu_c, idx_c, level, rdoq))
        indexes, means_g = torch.where(mask, idx_h, idx_c), torch.where(mask, mu_h, mu_c)
        c = self._cache()
        enc = BufferedRansEncoder()
        for part in (mask, ~mask):
            enc.encode_with_indexes(sym[part].tolist(), indexes[part].tolist(), c["cdf"],
                                    c["cdf_length"], c["offset"])
        return {"strings": [[enc.flush()], z_strings], "shape": tuple(z.shape[-2:]),
                "symbols_crc": symbols_crc(sym), "y_hat": self._ungain(sym, means_g, level)}

    def _code_passes(self, scales_h: Tensor, means_h: Tensor, level: float, integer: bool,
                     code: Callable[[slice, Tensor, Tensor, Tensor, Tensor | None], Tensor]
                     ) -> tuple[Tensor, Tensor]:
        """Anchors with the hyperprior's params, then the rest with the context's."""
        idx_h, mu_h = self._index(scales_h, means_h, level, integer)
        mask = anchor_mask(*idx_h.shape[-2:]).bool().expand_as(idx_h)
        sym = code(slice(None), mask, idx_h, mu_h, None)
        anchors = self._ungain(sym, mu_h, level) * mask
        idx_c, mu_c = self._index(*self._context(anchors, scales_h, means_h, level, integer),
                                  level, integer)
        sym = code(slice(None), ~mask, idx_c, mu_c, sym)
        return sym, torch.where(mask, mu_h, mu_c)

    def _round(self, r: Tensor, indexes: Tensor, level: float, rdoq: bool) -> Tensor:
        if not rdoq:
            return torch.round(r).int()
        gc = self.gaussian_conditional
        return rd_round(r, gc.scale_table.cpu()[indexes.long()], self.lambda_for(level), gc)

    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int], level: float,
                   integer: bool = True, device: torch.device | None = None,
                   synthesis: Any = None) -> tuple[Tensor, int]:
        import contextlib

        import numpy as np
        from ._compressai import RansDecoder

        z_hat_g = self.entropy_bottleneck.decompress(strings[1], tuple(shape))
        scales_h, means_h = self._hyper(z_hat_g, level, integer)
        idx_h, mu_h = self._index(scales_h, means_h, level, integer)
        mask = anchor_mask(*idx_h.shape[-2:]).bool().expand_as(idx_h)
        c = self._cache()
        dec = RansDecoder()
        dec.set_stream(strings[0][0])

        def decode(indexes: Tensor) -> Tensor:
            out = dec.decode_stream(indexes.tolist(), c["cdf"], c["cdf_length"], c["offset"])
            return torch.from_numpy(np.asarray(out, dtype=np.int32))

        sym = torch.zeros(idx_h.shape, dtype=torch.int32)
        sym[mask] = decode(idx_h[mask])
        anchors = self._ungain(sym, mu_h, level) * mask
        idx_c, mu_c = self._index(*self._context(anchors, scales_h, means_h, level, integer),
                                  level, integer)
        sym[~mask] = decode(idx_c[~mask])
        y_hat = self._ungain(sym, torch.where(mask, mu_h, mu_c), level)
        with synthesis or contextlib.nullcontext():
            x_hat = self.synthesize(y_hat, device)
        return x_hat.float(), symbols_crc(sym)


class GroupedCheckerboardHyperprior(CheckerboardHyperprior):
    """vaecodec 2 with channel groups: the same transforms and hyperprior, y coded in uneven
    channel groups with a checkerboard in each (He et al., "ELIC", CVPR 2022; see
    context.GroupedCheckerboardContext). One rANS stream, 2 x groups parallel passes::

        z_hat -> h_s -> (scales_h, means_h)
                              |
              for each group k:   earlier groups' y_hat --+
                              v                            v
                  anchors_k: params <- chan_k ----- Q -> [GC] -> anchors_k' y_hat
                              |                                      |
                  non-anchors_k: params <- chan_k + spat_k <---------+
                                             Q -> [GC] -> group k's y_hat
                                                             |
                                all groups' y_hat -> g_s -> x_hat

    Every network between decoded symbols and the coder runs in integers when coding.
    """

    LATENT_CODEC = "groups"

    def __init__(self, N: int = 128, M: int = 192, lambdas: tuple[float, ...] = DEFAULT_LAMBDAS,
                 groups: tuple[int, ...] = ELIC_GROUPS, chan: int = 64, spat: int = 64,
                 hidden: int = 128, kernel: int = 5):
        VariableRateHyperprior.__init__(self, N, M, lambdas)
        self.context = GroupedCheckerboardContext(M, tuple(groups), chan, spat, hidden, kernel)

    def forward(self, x: Tensor, level: Tensor, autocast: bool = False,
                rate: str = "noise") -> dict[str, Any]:
        """Joint training pass: every group's params from what the decoder will have (earlier
        groups and the group's anchors rounded around their means), straight-through."""
        y, scales_h, means_h, z_likelihoods, (gy, gy_inv) = self._train_prior(x, level, autocast)
        ctx = self.context
        mask = anchor_mask(*y.shape[-2:], device=y.device).bool()
        y_g = y * gy
        scales, means, decoded, hats = [], [], [], []
        for k in range(len(ctx.groups)):
            yk, g, g_inv, sh, mh = (ctx.slice(k, t) for t in (y_g, gy, gy_inv, scales_h, means_h))
            prev = torch.cat(decoded, 1) if k else None
            sa, ma = ctx.anchor_params(k, prev, sh, mh, g_inv)
            a_hat = yk + (torch.round(yk - ma * g) + ma * g - yk).detach()
            sn, mn = ctx.nonanchor_params(k, prev, a_hat * g_inv * mask, sh, mh, g_inv)
            s, m = torch.where(mask, sa, sn), torch.where(mask, ma, mn)
            hats.append(yk + (torch.round(yk - m * g) + m * g - yk).detach())
            decoded.append(hats[-1] * g_inv)
            scales.append(s)
            means.append(m)
        scales, means = torch.cat(scales, 1), torch.cat(means, 1)
        y_likelihoods = self._y_likelihoods(y_g, torch.cat(hats, 1), scales * gy, means * gy,
                                            rate)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            x_hat = self.g_s(torch.cat(decoded, 1))
        return {"x_hat": x_hat.float(), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def _cache(self) -> dict[str, Any]:
        cache = VariableRateHyperprior._cache(self)
        if "int_context" not in cache:
            cache["int_context"] = IntegerGroupedContext(self.context)
        return cache

    def _group_params(self, k: int, anchors_pass: bool, decoded: Tensor | None,
                      anchors: Tensor | None, scales_h: Tensor, means_h: Tensor,
                      level: float, integer: bool, channels: slice) -> tuple[Tensor, Tensor]:
        """Group k's ungained (scales, means) for one pass; integers on the 2^-12 grid on the
        integer path, computed in tiles (exact, so the same as the whole grid's)."""
        if k == 0 and anchors_pass:
            return scales_h, means_h
        g = scales_h.shape[1]
        if integer:
            gy_inv, _ = gains_fixed(self.y_log_gain_inv, level)
            step = IntegerHyperSynthesis.to_grid(torch.tensor(gy_inv[channels]).view(1, -1, 1, 1))
            f = self._cache()["int_context"]
            parts = [scales_h, means_h]
            parts += [IntegerHyperSynthesis.to_grid(anchors)] if not anchors_pass else []
            parts += [IntegerHyperSynthesis.to_grid(decoded)] if k else []

            def run(t: Tensor) -> Tensor:
                a = t[:, 2 * g:3 * g] if not anchors_pass else None
                d = t[:, (2 if anchors_pass else 3) * g:] if k else None
                return torch.cat(f(k, anchors_pass, d, a, t[:, :g], t[:, g:2 * g], step), 1)

            # the widest window is kernel // 2 latents; an even halo keeps each tile's
            # checkerboard in phase with the whole grid's
            halo = 2 * -(-max(self.context.kernel // 2, 1) // 2)
            return tiled(run, torch.cat(parts, 1), TILE, halo, down=1, up=1).chunk(2, 1)
        # the float control, in the context's own precision
        ctx = self.context.cpu()
        dt = ctx.spat[0].weight.dtype
        lv = torch.full((scales_h.size(0),), float(level))
        step = self.gains(lv)[1].cpu()[:, channels].to(dt)
        decoded = decoded.to(dt) if decoded is not None else None
        sh, mh = scales_h.to(dt), means_h.to(dt)
        out = (ctx.anchor_params(k, decoded, sh, mh, step) if anchors_pass else
               ctx.nonanchor_params(k, decoded, anchors.to(dt), sh, mh, step))
        return out[0].float(), out[1].float()

    def _code_groups(self, scales_h: Tensor, means_h: Tensor, level: float, integer: bool,
                     code: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor | None], Tensor]
                     ) -> tuple[Tensor, Tensor]:
        """The passes in coding order, shared by encoder and decoder: ``code(channels, part,
        indexes, means_g, symbols)`` encodes or decodes the symbols at ``part`` and returns
        the group's symbols so far. Returns all symbols and their gained means."""
        ctx = self.context
        mask = anchor_mask(*scales_h.shape[-2:]).bool()
        syms, mus, decoded = [], [], []
        for k in range(len(ctx.groups)):
            c = slice(ctx.starts[k], ctx.starts[k] + ctx.groups[k])
            sh, mh = scales_h[:, c], means_h[:, c]
            prev = torch.cat(decoded, 1) if k else None
            idx_a, mu_a = self._index(*self._group_params(k, True, prev, None, sh, mh, level,
                                                          integer, c), level, integer, c)
            sym = code(c, mask.expand_as(idx_a), idx_a, mu_a, None)
            anchors = self._ungain(sym, mu_a, level, c) * mask
            idx_n, mu_n = self._index(*self._group_params(k, False, prev, anchors, sh, mh,
                                                          level, integer, c), level, integer, c)
            sym = code(c, ~mask.expand_as(idx_n), idx_n, mu_n, sym)
            mu = torch.where(mask, mu_a, mu_n)
            decoded.append(self._ungain(sym, mu, level, c))
            syms.append(sym)
            mus.append(mu)
        return torch.cat(syms, 1), torch.cat(mus, 1)

    def _code_passes(self, *args: Any) -> tuple[Tensor, Tensor]:
        return self._code_groups(*args)

    def compress_latent(self, y: Tensor, z: Tensor, level: float, integer: bool = True,
                        rdoq: bool = True) -> dict[str, Any]:
        from ._compressai import BufferedRansEncoder

        lv = torch.full((z.size(0),), float(level), device=z.device)
        z = z * self.gains(lv)[2]
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat_g = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        scales_h, means_h = self._hyper(z_hat_g, level, integer)
        gy, _ = gains_fixed(self.y_log_gain, level)
        y_g = y.float().cpu() * torch.tensor(gy, dtype=torch.float32).view(1, -1, 1, 1)
        cache = self._cache()
        enc = BufferedRansEncoder()

        def code(c: slice, part: Tensor, idx: Tensor, mu: Tensor, sym: Tensor | None) -> Tensor:
            # only this pass's half is rounded: the other half's means are not known yet
            ip = idx[part]
            s = self._round((y_g[:, c] - mu)[part], ip, level, rdoq)
            enc.encode_with_indexes(s.tolist(), ip.tolist(), cache["cdf"],
                                    cache["cdf_length"], cache["offset"])
            out = torch.zeros(idx.shape, dtype=torch.int32) if sym is None else sym.clone()
            out[part] = s
            return out

        sym, means_g = self._code_groups(scales_h, means_h, level, integer, code)
        return {"strings": [[enc.flush()], z_strings], "shape": tuple(z.shape[-2:]),
                "symbols_crc": symbols_crc(sym), "y_hat": self._ungain(sym, means_g, level)}

    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int], level: float,
                   integer: bool = True, device: torch.device | None = None,
                   synthesis: Any = None) -> tuple[Tensor, int]:
        import contextlib

        import numpy as np
        from ._compressai import RansDecoder

        z_hat_g = self.entropy_bottleneck.decompress(strings[1], tuple(shape))
        scales_h, means_h = self._hyper(z_hat_g, level, integer)
        cache = self._cache()
        dec = RansDecoder()
        dec.set_stream(strings[0][0])

        def code(c: slice, part: Tensor, idx: Tensor, mu: Tensor, sym: Tensor | None) -> Tensor:
            out = torch.zeros(idx.shape, dtype=torch.int32) if sym is None else sym.clone()
            got = dec.decode_stream(idx[part].tolist(), cache["cdf"], cache["cdf_length"],
                                    cache["offset"])
            out[part] = torch.from_numpy(np.asarray(got, dtype=np.int32))
            return out

        sym, means_g = self._code_groups(scales_h, means_h, level, integer, code)
        y_hat = self._ungain(sym, means_g, level)
        with synthesis or contextlib.nullcontext():
            x_hat = self.synthesize(y_hat, device)
        return x_hat.float(), symbols_crc(sym)
