"""``python -m fcnkit``: the command line (also what ``torchrun -m fcnkit train ...`` runs)."""

from .cli import main

raise SystemExit(main())
