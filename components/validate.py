"""KFP component: the pipeline's first task (`rlhf.pipeline_inputs`): every parameter value, then
every dataset line, checked before any accelerator is provisioned.

It takes every pipeline parameter, declared once, in the pipeline's signature: `validate_inputs_for`
writes a lightweight component whose inputs are exactly those parameters. kfp ships a lightweight
component as its function's source, so the function is rendered as source text (registered with
`linecache`, where `inspect.getsource` finds it) rather than given a signature at run time.
"""

from __future__ import annotations

import inspect
import linecache
import typing
from typing import Mapping, NamedTuple, Optional

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Markdown, Metrics, Output

from components.image import IMAGE

# Outputs besides the parameters: the canonical datasets (an empty file for one not given), the
# stats and summaries; then what the graph's conditions read.
OUTPUTS = ("preference_data", "prompt_data", "eval_data", "labeled_data", "sft_data")
REPORTS = {"stats": "Artifact", "metrics": "Metrics", "summary": "Markdown", "summary_html": "HTML"}
Decisions = NamedTuple("Decisions", has_eval_dataset=bool, reward_model_as_job=bool, tuning_as_job=bool)

_BODY = '''
    """Check every pipeline parameter value with the validators `rlhf submit` uses, then every line
    of the datasets; write the datasets in the canonical format every later task reads. A bad value
    or line fails this task, naming the parameter (or FILE:LINE) and what is allowed."""
    from rlhf import storage
    from rlhf.data.validate import ValidationOutputs
    from rlhf.errors import reported_as_task_failure
    from rlhf.pipeline_inputs import validate_inputs

    values = {{name: value for name, value in locals().items() if name in {parameters!r}}}
    with reported_as_task_failure():
        decisions, scalars = validate_inputs(values, ValidationOutputs(
            preference=preference_data.path, prompts=prompt_data.path, eval=eval_data.path,
            labeled=labeled_data.path, sft=sft_data.path, stats=stats.path, summary_md=summary.path,
            summary_html=summary_html.path), target={target!r}, launches_jobs={launches_jobs!r})
    for name, value in scalars.items():
        metrics.log_metric(name, value)
    storage.write_json(metrics.path, scalars)  # a file at .path keeps KFP's cache working
    return (decisions.has_eval_dataset, decisions.reward_model_as_job, decisions.tuning_as_job)
'''


def _annotation(parameter: inspect.Parameter) -> str:
    kind = parameter.annotation
    if typing.get_origin(kind) is typing.Union:  # Optional[X]
        inner = next(a for a in typing.get_args(kind) if a is not type(None))
        return f"Optional[{inner.__name__}]"
    return kind.__name__


def validate_inputs_for(parameters: Mapping[str, inspect.Parameter], target: str, launches_jobs: bool):
    """The first task's component for a pipeline with `parameters` (its signature's), compiled for
    `target`; `launches_jobs`: whether its training stages can run as multi-node jobs."""
    inputs = [f"{name}: {_annotation(p)}" for name, p in parameters.items() if p.default is not None]
    inputs += [f"{name}: {_annotation(p)} = None" for name, p in parameters.items() if p.default is None]
    outputs = [f"{name}: Output[Dataset]" for name in OUTPUTS] + [f"{n}: Output[{t}]" for n, t in REPORTS.items()]
    source = ("def validate_inputs(\n" + "".join(f"    {line},\n" for line in outputs + inputs)
              + ") -> NamedTuple('Decisions', has_eval_dataset=bool, reward_model_as_job=bool, tuning_as_job=bool):"
              + _BODY.format(parameters=sorted(parameters), target=target, launches_jobs=launches_jobs))
    filename = f"<components.validate:{target}:{launches_jobs}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"Output": Output, "Dataset": Dataset, "Artifact": Artifact, "Metrics": Metrics,
                 "Markdown": Markdown, "HTML": HTML, "NamedTuple": NamedTuple, "Optional": Optional}
    exec(compile(source, filename, "exec", dont_inherit=True), namespace)
    return dsl.component(base_image=IMAGE, install_kfp_package=False)(namespace["validate_inputs"])
