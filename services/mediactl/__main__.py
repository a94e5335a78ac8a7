"""`python -m services.mediactl`, the same as the installed `mediactl` command."""

from services.mediactl.main import main

raise SystemExit(main())
