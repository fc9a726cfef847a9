"""Supervised task heads on the shared memory cores (paper §4.1-4.3).

* :mod:`~fw_agents.tasks.retrieval`: associative retrieval (Table 1, Figure 2).
* :mod:`~fw_agents.tasks.glimpses`: multi-level glimpse classification, MNIST-format
  digits and 48x48 faces (Tables 2-3); geometry in :mod:`~fw_agents.tasks.glimpse_geometry`.
* :mod:`~fw_agents.tasks.datasets`: IDX / FER-2013 / class-folder loaders (no downloads).
* :mod:`~fw_agents.tasks.training`: the shared Adam loop with best-validation selection.
* :mod:`~fw_agents.tasks.cli`, :mod:`~fw_agents.tasks.sweep`: command-line and grid helpers.

Each task is a command: ``python -m fw_agents.tasks.retrieval --help``.
"""
