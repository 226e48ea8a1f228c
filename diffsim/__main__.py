"""``python -m diffsim ...`` is the ``diffsim`` command."""
from .cli import main

raise SystemExit(main())
