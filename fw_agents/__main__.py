"""``python -m fw_agents``: the training command (:mod:`fw_agents.train`, also ``fw-train``)."""

import sys

from fw_agents.train import main

sys.exit(main())
