"""`python -m services.devstack up|down|run|env` (see services/devstack/cli.py)."""

from services.devstack.cli import main

raise SystemExit(main())
