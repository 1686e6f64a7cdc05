"""``python -m vaecodec``: the command line, also what ``torchrun -m vaecodec train`` starts
once per process for distributed training."""

from .cli import main

main(prog_name="vaecodec")
