"""Cold start: an encode and a decode in a fresh process import torch and little else.

Counted in modules, not seconds (timings depend on the machine; benchmarks/coldstart.py
measures those): CompressAI's package __init__ alone would pull in torch_geometric, pandas,
scipy and its datasets, several seconds of imports the codec never uses (see
vaecodec/_compressai.py)."""

import json
import subprocess
import sys

from conftest import natural_image

#: Packages an encode or decode must not import.
HEAVY = ("torch_geometric", "pandas", "scipy", "sympy", "matplotlib", "torchvision",
         "pytorch_msssim", "compressai.datasets", "compressai.zoo", "compressai.models.google",
         "compressai.latent_codecs")
#: Modules beyond `import torch` that the whole command may add (PIL, click, vaecodec,
#: the few CompressAI modules it uses, safetensors: about 80 today; the full CompressAI
#: import adds over 2000).
MAX_EXTRA = 250

CLI_RUN = """
import json, sys
from vaecodec.cli import main
png, vae, out = sys.argv[1:]
for args in (["encode", png, "-o", vae, "-q", "50", "--quiet"],
             ["decode", vae, "-o", out, "--quiet"]):
    try:
        main(args)
    except SystemExit as e:
        assert not e.code, (args, e.code)
print(json.dumps(sorted(sys.modules)))
"""


def modules(code: str, *args) -> set[str]:
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    return set(json.loads(r.stdout.decode().splitlines()[-1]))


def test_encode_and_decode_import_no_heavy_packages(tmp_path):
    png = tmp_path / "a.png"
    natural_image(96, 64).save(png)
    used = modules(CLI_RUN, png, tmp_path / "a.vae", tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 0
    heavy = sorted(m for m in used if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == [], heavy
    torch_only = modules("import json, sys, torch; print(json.dumps(sorted(sys.modules)))")
    extra = used - torch_only
    assert len(extra) < MAX_EXTRA, sorted(extra)


def test_full_compressai_still_works_after_the_light_import():
    """A program that uses vaecodec and then CompressAI itself gets all of CompressAI, with
    the very classes the codec uses (and scipy for GaussianConditional.update): what the
    codec left out is imported on first use."""
    code = ("import sys, json\nimport vaecodec.model\nfrom vaecodec import _compressai as c\n"
            "from compressai.models import MeanScaleHyperprior\n"
            "import compressai, compressai.zoo\n"
            "from compressai.entropy_models import GaussianConditional\n"
            "assert GaussianConditional is c.GaussianConditional\n"
            "assert compressai.get_entropy_coder() == 'ans' and compressai.__version__\n"
            "m = MeanScaleHyperprior(8, 8)\nm.update(force=True)\n"
            "assert 'scipy.stats' in sys.modules\n"
            "assert compressai.datasets.ImageFolder and compressai.losses  # the rest, on use\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    assert "compressai.datasets" in modules(code)
