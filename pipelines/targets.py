"""Where a compiled pipeline runs, and how its tasks ask for hardware there.

- `vertex`: Vertex AI Pipelines. Training tasks ask for the GPU named by a pipeline parameter
  (`NVIDIA_L4`, `NVIDIA_TESLA_A100`, `NVIDIA_H100_80GB`, ...), a count, and CPU and memory limits;
  Vertex picks the smallest machine that fits them.
- `kfp`: a Kubeflow Pipelines cluster. Training tasks ask for `nvidia.com/gpu` (the Kubernetes resource
  name; the GPU model is whatever the cluster's GPU nodes carry).
- `kfp-cpu`: a Kubeflow Pipelines cluster without GPUs (a kind cluster on a laptop): CPU and memory
  only.
- `local`: kfp's local runner. Nothing is requested (the local runner ignores resources anyway).

A training stage with `*_replica_count` > 1 or a `*_machine_type` runs as a multi-node job instead
(`rlhf.jobs`): a Vertex AI CustomJob on `vertex`; on `kfp` a Kubeflow Trainer TrainJob or a Training
Operator PyTorchJob when compiled with `--training-operator trainjob|pytorchjob`. Such a stage is one
sub-pipeline holding both ways, chosen by the first task's checked answer, joined with `dsl.OneOf`
(which kfp's local runner cannot resolve for artifacts: a template without a training operator, and
`local`, always train in the task, and the local runner runs them whole).
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable, Mapping

from kfp import dsl
from kfp.dsl import PipelineTask
from kfp.dsl.pipeline_channel import PipelineChannel

from rlhf.credentials import HUB_TOKEN_SECRET_ENV
from rlhf.pipeline_settings import Stage

TARGETS = ("vertex", "kfp", "kfp-cpu", "local")
KFP_GPU_RESOURCE = "nvidia.com/gpu"
TRAINING_OPERATORS = ("trainjob", "pytorchjob")  # what runs a multi-node stage on a Kubeflow cluster

# Google's placeholders: Vertex fills in the project and region the pipeline runs in.
PROJECT_ID_PLACEHOLDER = "{{$.pipeline_google_cloud_project_id}}"
LOCATION_PLACEHOLDER = "{{$.pipeline_google_cloud_location}}"

# Small CPU steps (validation, uploads, bookkeeping): Vertex's default e2-standard-4 fits them.
SMALL_CPU = "4"
SMALL_MEMORY = "16G"


def with_hub_token_secret(task: PipelineTask) -> PipelineTask:
    """Give a model-loading task the hub-token secret's name, when one was named at compile time
    (`rlhf compile --hub-token-secret`). Only the name goes into the YAML: the task reads the token
    from Secret Manager at run time (rlhf.credentials), so it never appears in the template, the
    parameters or the logs."""
    name = os.environ.get(HUB_TOKEN_SECRET_ENV, "").strip()
    if name:
        task.set_env_variable(HUB_TOKEN_SECRET_ENV, name)
    return task


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
    return target


def _register(task: PipelineTask, *values) -> None:
    # kfp 2.17 leaves a parameter used only in a resource setting out of the inputs of an enclosing
    # dsl.If group, so the compiled placeholder would point at nothing; registering it adds it.
    channels = [v for v in values if isinstance(v, PipelineChannel)]
    if channels:
        task.register_pipeline_channels(channels)


def request_accelerator(task: PipelineTask, target: str, accelerator_type, accelerator_count,
                        cpu_limit=None, memory_limit=None, image: str | None = None) -> PipelineTask:
    """Ask for `accelerator_count` GPUs plus CPU and memory (None: whatever the GPU's machine has) on
    `target`; values may be pipeline parameters. `image` replaces the component's image (the CUDA
    build). Such a task loads models: it gets the hub-token secret."""
    check_target(target)
    with_hub_token_secret(task)
    if target == "local":
        return task
    if image:
        task.set_container_image(image)
    kind = accelerator_type if target == "vertex" else KFP_GPU_RESOURCE
    if target == "kfp-cpu":
        kind = accelerator_count = None
    else:
        task.set_accelerator_type(kind).set_accelerator_limit(accelerator_count)
    if cpu_limit is not None:
        task.set_cpu_limit(cpu_limit)
    if memory_limit is not None:
        task.set_memory_limit(memory_limit)
    _register(task, kind, accelerator_count, cpu_limit, memory_limit)
    return task


def request_small_machine(task: PipelineTask, target: str) -> PipelineTask:
    """A CPU-only step: a few cores and some memory, no accelerator."""
    check_target(target)
    if target != "local":
        task.set_cpu_limit(SMALL_CPU).set_memory_limit(SMALL_MEMORY)
    return task


# -- one hardware profile per stage ------------------------------------------------------------------
# A stage sub-pipeline is sized by these inputs; the pipeline fills them from its parameters with
# `stage_hardware`.
GPU_PROFILE = {"gpu_type": str, "gpu_count": int, "cpu_limit": str, "memory_limit": str}
# A training stage also says how many machines, and which machine type ("": from the GPUs).
NODES_PROFILE = {"replica_count": int, "machine_type": str}


def stage_hardware(prefix: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The profile of stage `prefix` (e.g. `reward_model`) from the pipeline's parameters
    `{prefix}_accelerator_type`, `_accelerator_count`, `_cpu_limit` and `_memory_limit`, and for a
    training stage `{prefix}_replica_count` and `_machine_type`."""
    hardware = {"gpu_type": params[f"{prefix}_accelerator_type"], "gpu_count": params[f"{prefix}_accelerator_count"],
                "cpu_limit": params[f"{prefix}_cpu_limit"], "memory_limit": params[f"{prefix}_memory_limit"]}
    if f"{prefix}_replica_count" in params:
        hardware.update(replica_count=params[f"{prefix}_replica_count"],
                        machine_type=params[f"{prefix}_machine_type"])
    return hardware


def job_platform(target: str, training_operator: str | None = None) -> str | None:
    """What runs a multi-node stage on `target` (`rlhf.jobs.launcher.PLATFORMS`): a custom job on
    `vertex`, the chosen operator's job on a Kubeflow target; None (always in the task) on `local`
    and on a Kubeflow target compiled without an operator."""
    check_target(target)
    if training_operator is not None and training_operator not in TRAINING_OPERATORS:
        raise ValueError(f"unknown training operator {training_operator!r}: choose one of "
                         f"{', '.join(TRAINING_OPERATORS)}")
    return {"vertex": "vertex", "local": None}.get(target, training_operator)


def stage_settings(stage: Stage, params: Mapping[str, Any]) -> dict[str, Any]:
    """A stage's training settings from the pipeline's parameters, by config field name (the names
    the stage's component takes), as `rlhf.pipeline_settings` maps them."""
    return {field: params[parameter] for parameter, field in stage.parameters.items()}


def component_inputs(component, skip: tuple = ()) -> list[inspect.Parameter]:
    """The inputs of a Python component (outputs left out), to declare on a sub-pipeline that
    passes them through: the component's signature is their one declaration."""
    out = []
    for p in inspect.signature(component.python_func).parameters.values():
        if p.name in skip or "Output" in repr(p.annotation):
            continue
        annotation = p.annotation
        if "Input[" in repr(annotation):  # a sub-pipeline receives the artifact from an earlier step
            annotation = next(a for a in getattr(annotation, "__args__", (annotation,)) if a is not type(None))
            out.append(p.replace(annotation=annotation, default=inspect.Parameter.empty))
        else:
            out.append(p)
    return out


def sub_pipeline(name: str, description: str, inputs: list[inspect.Parameter], returns: Any = None):
    """Decorate `body(**inputs)` into a KFP sub-pipeline whose inputs are `inputs` (declared once,
    elsewhere: a component's signature, a hardware profile) rather than a hand-copied signature."""
    def wrap(body: Callable):
        ordered = ([p for p in inputs if p.default is inspect.Parameter.empty]
                   + [p for p in inputs if p.default is not inspect.Parameter.empty])
        signature = inspect.Signature(ordered, return_annotation=returns or inspect.Signature.empty)

        def pipeline(*args):  # kfp calls it with one channel per input, in signature order
            return body(**signature.bind(*args).arguments)

        pipeline.__signature__ = signature
        pipeline.__name__ = name.replace("-", "_")
        pipeline.__doc__ = description
        return dsl.pipeline(name=name, description=description)(pipeline)
    return wrap


def declared(types: Mapping[str, type]) -> list[inspect.Parameter]:
    return [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=t) for n, t in types.items()]


def training_stage(target: str, component, launcher, *, name: str, description: str, outputs: type,
                   training_operator: str | None = None) -> Callable[..., PipelineTask]:
    """A training stage: `add(display_name, as_job, hardware, nodes, encryption_spec_key_name,
    **inputs)` adds it to the pipeline being built and returns its task, whose outputs are
    `outputs` (a NamedTuple of the component's outputs).

    Where the target can launch jobs (`job_platform`), the stage is one sub-pipeline named
    `name`: `launcher` (the same inputs and outputs; `components.jobs`) creates a multi-node job
    from a small CPU machine when the checked `as_job` says so, else `component` trains in the
    task on the GPUs the profile asks for; `dsl.OneOf` joins their outputs. Elsewhere the stage is
    `component`'s task alone."""
    from components.image import TRAINER_IMAGE

    platform = job_platform(target, training_operator)

    def in_task(values, hardware):
        return request_accelerator(component(**values), target, hardware["gpu_type"], hardware["gpu_count"],
                                   hardware["cpu_limit"], hardware["memory_limit"])

    if platform is None:
        def add(display_name, as_job, hardware, nodes, encryption_spec_key_name, **values):
            return in_task(values, hardware).set_display_name(display_name)
        return add

    inputs = component_inputs(component) + declared(
        {**GPU_PROFILE, **NODES_PROFILE, "as_job": bool, "encryption_spec_key_name": str})

    @sub_pipeline(name, description, inputs, returns=outputs)
    def stage(as_job, encryption_spec_key_name, **values):
        hardware = {k: values.pop(k) for k in GPU_PROFILE}
        nodes = {k: values.pop(k) for k in NODES_PROFILE}
        on_vertex = platform == "vertex"
        with dsl.If(as_job == True, name="As a multi-node job"):  # noqa: E712 (a pipeline condition)
            job = launcher(
                **values, **nodes, platform=platform, image=TRAINER_IMAGE,
                gpu_type=hardware["gpu_type"], gpu_count=0 if target == "kfp-cpu" else hardware["gpu_count"],
                cpu_limit=hardware["cpu_limit"], memory_limit=hardware["memory_limit"],
                project=PROJECT_ID_PLACEHOLDER if on_vertex else "",
                location=LOCATION_PLACEHOLDER if on_vertex else "",
                pipeline_root=dsl.PIPELINE_ROOT_PLACEHOLDER if on_vertex else "",
                encryption_spec_key_name=encryption_spec_key_name,
            ).set_display_name("Launch the multi-node job")
            request_small_machine(with_hub_token_secret(job), target)
        with dsl.Else(name="In the pipeline task"):
            task = in_task(values, hardware).set_display_name("Train in the pipeline task")
        return outputs(**{field: dsl.OneOf(job.outputs[field], task.outputs[field]) for field in outputs._fields})

    def add(display_name, as_job, hardware, nodes, encryption_spec_key_name, **values):
        return stage(**values, **hardware, **nodes, as_job=as_job,
                     encryption_spec_key_name=encryption_spec_key_name).set_display_name(display_name)
    return add


def clear_of_sub_pipeline_groups(skip: int = 100) -> None:
    """Call in a pipeline body before its first `dsl.If`: kfp 2.17 names condition groups
    `condition-N` counting from 1 in every pipeline and, compiling a parent, takes a sub-pipeline's
    group of the same name for the parent's ("component_input_artifact ... not found"). Starting the
    parent's count past any sub-pipeline's keeps the names apart."""
    from kfp.dsl import pipeline_context
    current = pipeline_context.Pipeline.get_default_pipeline()
    for _ in range(skip):
        current.get_next_group_id()
