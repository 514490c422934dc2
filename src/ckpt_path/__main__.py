"""``python -m ckpt_path`` runs the command line (and ``torchrun -m ckpt_path`` one per process)."""

from ckpt_path.cli import main

main()
