"""``python -m dcr_mllm.cli``: the same as the ``dcr-mllm`` console script."""

import sys

from dcr_mllm.cli import main

sys.exit(main())
