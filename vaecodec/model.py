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
from typing import Any

import torch
from torch import Tensor, nn

# CompressAI 1.2.8 calls torch.jit.script at import; torch 2.14 warns about it on every run.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")

from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import GDN
from compressai.models.utils import conv, deconv

from .intnet import (FRAC_BITS, IntegerHyperSynthesis, gains_fixed, scale_indexes,
                     scale_thresholds)

SCALES_MIN, SCALES_MAX, SCALES_LEVELS = 0.11, 256.0, 64

#: The lambdas (in lambda * 255^2 * MSE + bpp) of the trained rate levels: a geometric grid.
DEFAULT_LAMBDAS = tuple(
    float(0.0018 * (0.0932 / 0.0018) ** (i / 7)) for i in range(8)
)


def scale_table() -> Tensor:
    return torch.exp(torch.linspace(math.log(SCALES_MIN), math.log(SCALES_MAX), SCALES_LEVELS))


class VariableRateHyperprior(nn.Module):
    """Mean-scale hyperprior with gain units; see the module docstring for the dataflow."""

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

    def forward(self, x: Tensor, level: Tensor, autocast: bool = False) -> dict[str, Any]:
        """Training pass: uniform noise for the rate terms, straight-through rounding
        ``round(y - mu) + mu`` into the synthesis (no train/test mismatch for g_s)."""
        gy, gy_inv, gz, gz_inv = self.gains(level)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = self.g_a(x)
        y = y.float()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            z = self.h_a(y)
        z = z.float() * gz
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            params = self.h_s(z_hat * gz_inv)
        scales, means = params.float().chunk(2, 1)
        y_g, scales_g, means_g = y * gy, scales * gy, means * gy
        _, y_likelihoods = self.gaussian_conditional(y_g, scales_g, means=means_g)
        y_hat_g = y_g + (torch.round(y_g - means_g) + means_g - y_g).detach()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            x_hat = self.g_s(y_hat_g * gy_inv)
        return {"x_hat": x_hat.float(), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

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
        z_hat_g = z_hat_g.cpu()
        if integer:
            gy, gy_int = gains_fixed(self.y_log_gain, level)
            gz_inv, _ = gains_fixed(self.z_log_gain_inv, level)
            x = z_hat_g.double() * torch.tensor(gz_inv, dtype=torch.float64).view(1, -1, 1, 1)
            c = self._cache()
            scales_int, means_int = c["int_h_s"](IntegerHyperSynthesis.to_grid(x)).chunk(2, 1)
            indexes = scale_indexes(scales_int, gy_int, c["thresholds"])
            gyt = torch.tensor(gy, dtype=torch.float64).view(1, -1, 1, 1)
            means_g = (means_int * 2.0 ** -FRAC_BITS * gyt).float()
            return indexes, means_g
        lv = torch.full((z_hat_g.size(0),), float(level))
        gy, _, _, gz_inv = (g.cpu() for g in self.gains(lv))
        h_s = self.h_s.cpu()
        scales, means = h_s(z_hat_g * gz_inv).chunk(2, 1)
        return self.gaussian_conditional.build_indexes(scales * gy), means * gy

    def compress(self, x: Tensor, level: float, integer: bool = True) -> dict[str, Any]:
        """One image (batch of 1) -> z and y strings, z's shape, and the y symbols' CRC32."""
        from compressai.ans import RansEncoder

        lv = torch.full((x.size(0),), float(level), device=x.device)
        _, _, gz, _ = self.gains(lv)
        y = self.g_a(x)
        z = self.h_a(y) * gz
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat_g = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        indexes, means_g = self._y_params(z_hat_g, level, integer)
        gy, _ = gains_fixed(self.y_log_gain, level)
        y_g = y.float().cpu() * torch.tensor(gy, dtype=torch.float32).view(1, -1, 1, 1)
        symbols = torch.round(y_g - means_g).int()
        c = self._cache()
        y_string = RansEncoder().encode_with_indexes(
            symbols.reshape(-1).tolist(), indexes.reshape(-1).tolist(), c["cdf"],
            c["cdf_length"], c["offset"])
        return {"strings": [[y_string], z_strings], "shape": tuple(z.shape[-2:]),
                "symbols_crc": symbols_crc(symbols)}

    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int], level: float,
                   integer: bool = True, device: torch.device | None = None
                   ) -> tuple[Tensor, int]:
        """Strings -> (x_hat in [0, 1], CRC32 of the decoded y symbols): the caller compares
        the CRC with the one the encoder stored before trusting x_hat."""
        from compressai.ans import RansDecoder

        z_hat_g = self.entropy_bottleneck.decompress(strings[1], tuple(shape))
        indexes, means_g = self._y_params(z_hat_g, level, integer)
        c = self._cache()
        decoded = RansDecoder().decode_with_indexes(
            strings[0][0], indexes.reshape(-1).tolist(), c["cdf"], c["cdf_length"], c["offset"])
        symbols = torch.tensor(decoded, dtype=torch.int32).view_as(indexes)
        gy_inv, _ = gains_fixed(self.y_log_gain_inv, level)
        y_hat = (symbols.float() + means_g) * torch.tensor(gy_inv, dtype=torch.float32).view(
            1, -1, 1, 1)
        dev = device or next(self.g_s.parameters()).device
        return self.g_s(y_hat.to(dev)).clamp_(0, 1), symbols_crc(symbols)


def symbols_crc(symbols: Tensor) -> int:
    """CRC32 of the symbols as little-endian int32, the same on every machine."""
    return zlib.crc32(symbols.cpu().numpy().astype("<i4").tobytes())
