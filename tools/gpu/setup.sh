# Sourced at the start of every device call (run from the repository root there):
# the GPU image has torch, numpy, Pillow, click, safetensors, tqdm and matplotlib, but not
# CompressAI or pytorch-msssim (carried as wheels in .gpu/whl, see tools/gpu/pack.py).
# Where they are importable already (a dry run here), nothing is installed.
if ! python3 -c "import compressai, pytorch_msssim" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .gpu/whl/*.whl || return 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch, compressai, vaecodec; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
