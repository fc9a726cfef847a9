#!/usr/bin/env python
"""``python train_agent.py ...``: the training command (:mod:`fw_agents.train_cli`; installed as
``fw-train``, also ``python -m fw_agents``). ``--help`` lists every option."""

import sys

from fw_agents.train_cli import build_parser, main, parse_config  # noqa: F401  (the command's API, for scripts)

if __name__ == "__main__":
    sys.exit(main())
