"""The container images components run in, resolved in one place.

Tags follow the package version so a compiled pipeline always names the image built from the same
code. Point the pipeline at your own registry with `RLHF_IMAGE_REGISTRY` (for example
`us-central1-docker.pkg.dev/my-project/rlhf`), or pin exact images with `RLHF_CPU_IMAGE` /
`RLHF_GPU_IMAGE`. The variables are read when the components are imported, i.e.
when the pipeline is compiled.
"""

import os

from rlhf import __version__

DEFAULT_REGISTRY = "us-docker.pkg.dev/rlhf-pipeline/rlhf"
REGISTRY = os.environ.get("RLHF_IMAGE_REGISTRY", DEFAULT_REGISTRY).rstrip("/")


def image(kind: str) -> str:
    """`kind` is `cpu` (validation, small steps) or `gpu` (the CUDA trainers and evaluation)."""
    override = os.environ.get(f"RLHF_{kind.upper()}_IMAGE")
    return override or f"{REGISTRY}/rlhf-{kind}:{__version__}"


IMAGE = image("cpu")
TRAINER_IMAGE = image("gpu")
