"""Training stages as multi-node jobs on the platforms users already have.

A stage with more than one machine (``*_replica_count`` > 1) or a named machine type
(``*_machine_type``) does not train inside its pipeline task: a small launcher step creates a job
that runs the stage's own command (``python -m rlhf train-reward ...`` / ``python -m rlhf tune ...``)
on every node, follows it, and fills the stage's outputs from what global rank 0 wrote.

- ``machines``: Vertex AI machine types by accelerator type and count.
- ``stages``: what a stage's job runs (image, command line, outputs) and how the launcher fills the
  stage's artifacts afterwards; the same settings the in-task component would pass.
- ``follow``: the wait loop both platforms share (state changes printed, SIGTERM cancels, a failed
  job raises with its own error).
- ``vertex``: a Vertex AI CustomJob (worker pool 0: one replica, pool 1: the rest).
- ``kubernetes``: a Kubeflow Trainer ``TrainJob`` (or a Training Operator ``PyTorchJob``).

How each node starts PyTorch's launcher from ``CLUSTER_SPEC`` / ``PET_*`` is ``rlhf.launch``'s
business, not this package's. Nothing here imports kfp.
"""
