"""`rlhf compile` (and `python compile.py`): write the pipeline YAML for Vertex AI or Kubeflow Pipelines."""

from __future__ import annotations

import argparse
import os

HELP = "compile the RLHF pipeline to a YAML file for Vertex AI (default) or a Kubeflow Pipelines cluster"

DEFAULT_OUTPUT = "rlhf_pipeline.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", choices=("vertex", "kfp"), default="vertex",
                        help="vertex: GPUs by Vertex name (NVIDIA_L4, NVIDIA_H100_80GB, ...), upload and "
                             "deploy; kfp: nvidia.com/gpu on a Kubeflow cluster, no deploy (default: vertex)")
    parser.add_argument("--training-operator", choices=("trainjob", "pytorchjob"), default=None,
                        help="with --target kfp: let a training stage run on several machines "
                             "(*_replica_count > 1) as a trainjob, a Kubeflow Trainer v2 TrainJob "
                             "(trainer.kubeflow.org/v1alpha1), or a pytorchjob, a PyTorchJob of the older "
                             "Training Operator (kubeflow.org/v1) (default: none, every stage trains in one "
                             "pod and `rlhf run-local --template` can run the YAML)")
    parser.add_argument("--no-gpu", action="store_true",
                        help="with --target kfp: request no GPUs (a cluster without GPU nodes, e.g. kind)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT,
                        help=f"where to write the YAML (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--hub-token-secret", metavar="SECRET_VERSION",
                        help="Secret Manager secret version holding a model-hub token for gated models, e.g. "
                             "projects/PROJECT/secrets/hf-token/versions/latest: the tasks that load models read "
                             "it at run time; only this name goes into the YAML (the token never does)")
    parser.add_argument("--list-parameters", action="store_true",
                        help="also print a Markdown table of every pipeline parameter (type, default, meaning)")
    parser.add_argument("--image-registry", metavar="REGISTRY",
                        help="registry holding the rlhf-cpu and rlhf-gpu images, e.g. "
                             "us-central1-docker.pkg.dev/PROJECT/rlhf (default: $RLHF_IMAGE_REGISTRY "
                             "or the project's registry); images are tagged with the package version")


def compile_pipeline(target: str, output: str, training_operator: str | None = None) -> str:
    """Compile the pipeline for `target` into `output` (multi-node stages on Kubeflow as
    `training_operator` jobs); returns the path written."""
    from kfp import compiler

    from pipelines.rlhf_pipeline import build_pipeline

    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(target, training_operator), output)
    return output


def run(args: argparse.Namespace) -> int:
    from rlhf.errors import UserError

    if args.no_gpu and args.target != "kfp":
        raise UserError("--no-gpu applies to --target kfp (Vertex AI training always gets accelerators)")
    if args.training_operator and args.target != "kfp":
        raise UserError("--training-operator applies to --target kfp (Vertex AI runs multi-node stages as "
                        "custom jobs)")
    target = "kfp-cpu" if args.no_gpu else args.target
    operator = args.training_operator
    if args.image_registry:
        # components/image.py reads it when the components are first imported (below).
        os.environ["RLHF_IMAGE_REGISTRY"] = args.image_registry
    if args.hub_token_secret:
        from rlhf.credentials import HUB_TOKEN_SECRET_ENV, check_secret_version_name
        check_secret_version_name(args.hub_token_secret, "--hub-token-secret")
        os.environ[HUB_TOKEN_SECRET_ENV] = args.hub_token_secret  # read by pipelines.targets
    path = compile_pipeline(target, args.output, operator)
    from components.image import IMAGE, TRAINER_IMAGE
    print(f"wrote {path} (target: {target}" + (f", multi-node stages as {operator}s)" if operator else ")"))
    print(f"images: {IMAGE}, {TRAINER_IMAGE}")
    if args.list_parameters:
        from pipelines.rlhf_pipeline import build_pipeline
        from rlhf.parameters import load_template, parameter_table
        order = list(build_pipeline(target, operator).component_spec.inputs or {})
        print()
        print(parameter_table(load_template(path), order))
    return 0
