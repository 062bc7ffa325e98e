"""`python -m reprocls` is the same as the `reprocls` command."""

import sys

from reprocls.cli import main

sys.exit(main())
