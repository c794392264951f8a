"""`python -m infinilm_models.build`: see cli.py."""

import sys

from .cli import main

sys.exit(main())
