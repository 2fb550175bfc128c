"""``python -m modelfleet.engine``: run one simulated vLLM engine (see ``cli.py``)."""

import sys

from modelfleet.engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
