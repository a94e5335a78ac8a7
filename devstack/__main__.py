"""`python -m devstack up|down|run|env` (see devstack/cli.py)."""

from devstack.cli import main

raise SystemExit(main())
