"""The run plumbing: everything around training that is not the model or the algorithm.

One :class:`~fw_agents.runs.run.Run` owns a run's folder, its lock, the tracker (CSV,
TensorBoard, W&B), resume and safe loading; the training path (:mod:`fw_agents.train`) and the
supervised tasks (:mod:`fw_agents.tasks`) open one each. The modules behind it, one job each:

* :mod:`~fw_agents.runs.folder`: the run folder's name and its lock;
* :mod:`~fw_agents.runs.tracking`, :mod:`~fw_agents.runs.writers`,
  :mod:`~fw_agents.runs.sb3_logger`, :mod:`~fw_agents.runs.progress_csv`,
  :mod:`~fw_agents.runs.wandb_mode`: ``config.json``, the curves (CSV, TensorBoard) and W&B;
* :mod:`~fw_agents.runs.resume`: which checkpoint and settings a continued run has;
* :mod:`~fw_agents.runs.safe_load`: model files read without running their code;
* :mod:`~fw_agents.runs.preflight`: the env and the sizes checked before anything is written;
* :mod:`~fw_agents.runs.callbacks`, :mod:`~fw_agents.runs.evaluation`,
  :mod:`~fw_agents.runs.plots`: checkpoints, evaluations and the end-of-run pictures;
* :mod:`~fw_agents.runs.errors`, :mod:`~fw_agents.runs.signals`: how a run stops early
  (a non-finite loss; SIGTERM as Ctrl-C);
* :mod:`~fw_agents.runs.files`: every file written atomically.

Importing the package imports none of them (:mod:`fw_agents.config` reads
:mod:`~fw_agents.runs.wandb_mode` and stays plain data).
"""
