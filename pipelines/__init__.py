"""Pipeline wiring only: the top-level RLHF pipeline and one sub-pipeline per stage."""
