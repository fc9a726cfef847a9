"""``python -m fw_agents``: the training command (:mod:`fw_agents.train_cli`, also ``fw-train``)."""

import sys

from fw_agents.train_cli import main

sys.exit(main())
