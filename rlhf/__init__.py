"""RLHF on Kubeflow Pipelines and Vertex AI: validate data, train a reward model, tune with PPO, evaluate."""

__version__ = "0.1.0"
