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
from typing import Any

import torch
from torch import Tensor, nn

# CompressAI 1.2.8 calls torch.jit.script at import; torch 2.14 warns about it on every run.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")

from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import GDN
from compressai.models.utils import conv, deconv

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

    def update(self) -> None:
        """Build the integer CDF tables; done once at export, never at load time."""
        self.entropy_bottleneck.update(force=True)
        self.gaussian_conditional.update_scale_table(scale_table(), force=True)

    def _y_params(self, z_strings: list[bytes], z_shape: tuple[int, int], gz_inv: Tensor,
                  gy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z_hat = self.entropy_bottleneck.decompress(z_strings, z_shape)
        scales, means = self.h_s(z_hat * gz_inv).chunk(2, 1)
        scales_g, means_g = scales * gy, means * gy
        return z_hat, self.gaussian_conditional.build_indexes(scales_g), means_g

    def compress(self, x: Tensor, level: float) -> dict[str, Any]:
        lv = torch.full((x.size(0),), float(level), device=x.device)
        gy, _, gz, gz_inv = self.gains(lv)
        y = self.g_a(x)
        z = self.h_a(y) * gz
        z_shape = tuple(z.shape[-2:])
        z_strings = self.entropy_bottleneck.compress(z)
        _, indexes, means_g = self._y_params(z_strings, z_shape, gz_inv, gy)
        y_strings = self.gaussian_conditional.compress(y * gy, indexes, means=means_g)
        return {"strings": [y_strings, z_strings], "shape": z_shape}

    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int], level: float
                   ) -> Tensor:
        lv = torch.full((len(strings[1]),), float(level))
        gy, gy_inv, _, gz_inv = self.gains(lv)
        _, indexes, means_g = self._y_params(strings[1], tuple(shape), gz_inv, gy)
        y_hat_g = self.gaussian_conditional.decompress(strings[0], indexes, means=means_g)
        return self.g_s(y_hat_g * gy_inv).clamp_(0, 1)
