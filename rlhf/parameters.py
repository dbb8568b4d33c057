"""Check pipeline parameter values against a compiled template before anything is sent.

A compiled pipeline (YAML or JSON) declares its parameters under `root.inputDefinitions.parameters`
with a type (`STRING`, `NUMBER_INTEGER`, `NUMBER_DOUBLE`, `BOOLEAN`, `LIST`, `STRUCT`), a default and
whether it is optional. `resolve_parameters` merges a parameter file and `NAME=VALUE` overrides,
converts the command-line strings to the declared types and raises one `UserError` listing every
problem: unknown names (with the closest known name), wrong types, required parameters left out,
malformed `gs://` URIs, hardware values Vertex AI or Kubernetes would refuse, and every training
setting its step's own config refuses (`rlhf.pipeline_settings`), including an `*_options` key that
repeats a typed parameter. Nothing here imports kfp.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterable, Mapping, Optional

import yaml

from rlhf import storage
from rlhf.errors import UserError
from rlhf.pipeline_settings import HARDWARE_STAGES, MULTI_NODE_STAGES, accelerator_type_problem, setting_problems

STRING, INTEGER, DOUBLE, BOOLEAN, LIST, STRUCT = (
    "STRING", "NUMBER_INTEGER", "NUMBER_DOUBLE", "BOOLEAN", "LIST", "STRUCT")
_TYPE_WORDS = {STRING: "a string", INTEGER: "an integer", DOUBLE: "a number", BOOLEAN: "true or false",
               LIST: "a JSON list", STRUCT: "a JSON object"}

# Kubernetes-style quantities, which Vertex AI takes too: "8", "0.5", "500m"; "32G", "512Mi".
_CPU = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
_MEMORY = re.compile(r"^\d+(\.\d+)?(K|Ki|M|Mi|G|Gi|T|Ti)?$")

# Bucket names: 3-63 characters of lowercase letters, digits, '-', '_' and '.', starting and ending
# with a letter or digit (https://cloud.google.com/storage/docs/buckets#naming).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_TARGET = re.compile(r"\(target: (\w+)\)")


@dataclass(frozen=True)
class TemplateParameter:
    name: str
    type: str
    default: Any = None
    has_default: bool = False
    optional: bool = False

    @property
    def required(self) -> bool:
        return not (self.has_default or self.optional)


@dataclass(frozen=True)
class Template:
    path: str
    spec: dict

    @property
    def parameters(self) -> dict[str, TemplateParameter]:
        declared = self.spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}) or {}
        out = {}
        for name, decl in declared.items():
            kind = decl.get("parameterType", STRING)
            default = decl.get("defaultValue")
            if kind == INTEGER and isinstance(default, float) and default.is_integer():
                default = int(default)  # the compiler writes integer defaults as 512.0
            out[name] = TemplateParameter(name, kind, default, "defaultValue" in decl,
                                          bool(decl.get("isOptional")))
        return out

    @property
    def name(self) -> str:
        return self.spec.get("pipelineInfo", {}).get("name", "")

    @property
    def launches_jobs(self) -> bool:
        """Whether a training stage can run as a multi-node job (a launcher step in the graph)."""
        return any(name.startswith("comp-launch-") for name in self.spec.get("components", {}))

    @property
    def target(self) -> Optional[str]:
        """`vertex`, `kfp` or `local` for templates compiled by this project (from the description)."""
        match = _TARGET.search(self.spec.get("pipelineInfo", {}).get("description", ""))
        return match.group(1) if match else None


def load_template(path: str) -> Template:
    """Read a compiled pipeline (YAML or JSON; local path or gs:// URI)."""
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such template file; compile one with `rlhf compile --output {path}`")
    try:
        spec = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not a compiled pipeline (YAML error: {e}); compile one with `rlhf compile`")
    if not isinstance(spec, dict) or "root" not in spec or "pipelineInfo" not in spec:
        raise UserError(f"{path}: not a compiled pipeline (no `root`/`pipelineInfo`); "
                        f"compile one with `rlhf compile`")
    return Template(path, spec)


def parse_assignments(items: Iterable[str], flag: str = "--parameter") -> dict[str, str]:
    """`["NAME=VALUE", ...]` -> `{NAME: VALUE}` (values stay strings; later ones win)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"{flag} {item!r}: expected NAME=VALUE, e.g. {flag} reward_model_train_steps=200")
        out[name.strip()] = value
    return out


def load_parameter_file(path: str) -> dict[str, Any]:
    """A JSON or YAML mapping of parameter names to values (Vertex's `parameter_values`)."""
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such parameter file")
    try:
        values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        where = f":{e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise UserError(f"{path}{where}: cannot parse the parameter file: {e}")
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of parameter names to values, "
                        f'e.g. {{"reward_model_train_steps": 200}}; got {type(values).__name__}')
    return values


def _from_string(param: TemplateParameter, raw: str) -> Any:
    """Convert a command-line string to the parameter's type (ValueError when it does not fit)."""
    if param.type == STRING:
        return raw
    if param.type == INTEGER:
        return int(raw.strip())
    if param.type == DOUBLE:
        value = float(raw.strip())
        if not math.isfinite(value):
            raise ValueError(raw)
        return value
    if param.type == BOOLEAN:
        word = raw.strip().lower()
        if word in ("true", "1", "yes"):
            return True
        if word in ("false", "0", "no"):
            return False
        raise ValueError(raw)
    value = json.loads(raw)
    if not isinstance(value, list if param.type == LIST else dict):
        raise ValueError(raw)
    return value


def _typed(param: TemplateParameter, value: Any) -> Any:
    """Check a value from a parameter file (already typed by JSON/YAML); ValueError when wrong."""
    if value is None:
        if param.optional:
            return None
        raise ValueError("null")
    if param.type == STRING and isinstance(value, str):
        return value
    if param.type == INTEGER and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    if param.type == DOUBLE and isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
    if param.type == BOOLEAN and isinstance(value, bool):
        return value
    if param.type == LIST and isinstance(value, list):
        return value
    if param.type == STRUCT and isinstance(value, dict):
        return value
    raise ValueError(repr(value))


def gcs_uri_problem(uri: str) -> Optional[str]:
    """What is wrong with a `gs://bucket/path` URI, or None when it is well formed."""
    if not uri.startswith("gs://"):
        return "a Cloud Storage URI starts with gs:// (two slashes)"
    bucket, _, path = uri[len("gs://"):].partition("/")
    if not bucket:
        return "the bucket name is missing (gs://BUCKET/path)"
    if not _BUCKET.match(bucket) or ".." in bucket:
        return (f"{bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '-', '_' "
                f"or '.', starting and ending with a letter or digit)")
    if any(c.isspace() for c in uri):
        return "the URI contains whitespace"
    if "//" in path:
        return "the path contains an empty segment ('//')"
    return None


def _hardware_rules() -> dict[str, Callable[[Any], Optional[str]]]:
    """The check of each hardware parameter: one profile per stage (`rlhf.pipeline_settings`), plus
    Google's accelerator_type and the serving machine."""
    rules: dict[str, Callable[[Any], Optional[str]]] = {"accelerator_type": accelerator_type_problem,
                                                        "serving_accelerator_count": _count,
                                                        "serving_accelerator_type": _vertex_accelerator}
    for prefix in HARDWARE_STAGES:
        rules.update({f"{prefix}_accelerator_type": _vertex_accelerator, f"{prefix}_accelerator_count": _count,
                      f"{prefix}_cpu_limit": _cpu, f"{prefix}_memory_limit": _memory})
    for prefix in MULTI_NODE_STAGES:
        rules.update({f"{prefix}_replica_count": _count, f"{prefix}_machine_type": _machine_type})
    return rules


def _machine_type(value) -> Optional[str]:
    from rlhf.jobs.machines import machine_type_problem
    return machine_type_problem(value)


def job_machine_problems(values: Mapping[str, Any], target: Optional[str], launches_jobs: bool
                         ) -> list[tuple[str, str]]:
    """A stage asked to run as a job (several machines, or a machine type) needs a template that
    launches jobs (a Kubeflow one is compiled with --training-operator); on Vertex AI, with no
    machine type given, a machine that carries its GPUs (`rlhf.jobs.machines`). DPO trains in its
    pipeline task only."""
    from rlhf.jobs.machines import machine_type_for
    from rlhf.pipeline_settings import tuning_method
    out = []
    for prefix in MULTI_NODE_STAGES:
        replicas, machine = values.get(f"{prefix}_replica_count", 1), values.get(f"{prefix}_machine_type", "")
        name = f"{prefix}_replica_count" if replicas > 1 else f"{prefix}_machine_type"
        if (replicas > 1 or machine) and not launches_jobs:
            out.append((name, f"{name} {values[name]!r}: this template trains every stage in one pod; compile "
                              f"it with `rlhf compile --target kfp --training-operator trainjob` (or pytorchjob) "
                              f"to run a stage on several machines"))
        elif (replicas > 1 or machine) and prefix == "reinforcement_learning" and tuning_method(values) == "dpo":
            out.append((name, f"{name} {values[name]!r}: DPO trains on one machine (its pipeline task); leave "
                              f"reinforcement_learning_replica_count at 1 and reinforcement_learning_machine_type "
                              f"empty, or use tuning_method ppo"))
        elif replicas > 1 and not machine and target == "vertex":
            try:
                machine_type_for(values.get(f"{prefix}_accelerator_type", ""),
                                 values.get(f"{prefix}_accelerator_count", 1), what=f"{prefix}_machine_type")
            except UserError as e:
                out.append((f"{prefix}_replica_count", f"{prefix}_replica_count {replicas}: {e}"))
    return out


def _count(value) -> Optional[str]:
    return None if value >= 1 else f"must be at least 1, got {value}"


def _cpu(value) -> Optional[str]:
    return None if _CPU.match(value) else f"must be a number of CPUs such as 8 or 500m, got {value!r}"


def _memory(value) -> Optional[str]:
    return None if _MEMORY.match(value) else f"must be an amount of memory such as 32G or 512Mi, got {value!r}"


def _vertex_accelerator(value) -> Optional[str]:
    known = _vertex_accelerators()
    if not value or not known or value in known:
        return None
    close = difflib.get_close_matches(value, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (one of {', '.join(known)})"
    return f"is not a Vertex AI accelerator: {value!r}{hint}"


def _vertex_accelerators() -> list[str]:
    """Accelerator names Vertex AI knows (from the installed client), or [] when it is absent."""
    try:
        from google.cloud.aiplatform_v1.types import AcceleratorType
    except ImportError:
        return []
    return [a.name for a in AcceleratorType if a.name != "ACCELERATOR_TYPE_UNSPECIFIED"]


def _remote_path_problem(value: str, remote: str) -> Optional[str]:
    """A dataset the pipeline's machines cannot read: on Vertex AI only Cloud Storage (gs:// or its
    /gcs/ mount); on a Kubeflow cluster also an absolute path inside the pods (image or volume)."""
    if value.startswith("gs://") or value.startswith("/gcs/"):
        return None
    if remote == "kfp" and value.startswith("/"):
        return None
    where = "a path inside the pipeline's pods (an absolute path) or " if remote == "kfp" else ""
    return (f"{value!r} is a path on this machine, which the pipeline's machines cannot read: pass "
            f"{where}a gs:// URI (upload with `gcloud storage cp FILE gs://BUCKET/DIR/`)")


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def value_problems(values: Mapping[str, Any], given: Optional[Collection[str]] = None,
                   target: Optional[str] = None, launches_jobs: bool = False,
                   remote: Optional[str] = None) -> list[tuple[str, str]]:
    """(parameter, problem) for every typed pipeline parameter value in `values` (all of them: given
    or default). The one check behind `rlhf submit`, `rlhf run-local` and the pipeline's own first
    task (`rlhf.pipeline_inputs`), so a value typed in a console is refused as the CLI refuses it.
    `given`: the names the user set (None: unknown); `target`/`launches_jobs`: the template's."""
    hardware = _hardware_rules()
    problems: list[tuple[str, str]] = []
    for name, value in values.items():
        if value is None:
            continue
        rule = hardware.get(name)
        problem = rule(value) if rule else None
        if problem is None and isinstance(value, str) and value[:3].lower() == "gs:":
            problem = gcs_uri_problem(value)
            if problem:
                problem = f"malformed Cloud Storage URI {value!r}: {problem}"
        if problem is None and remote and name.endswith("_dataset") and value and (given is None or name in given):
            problem = _remote_path_problem(value, remote)
        if problem:
            problems.append((name, f"parameter {name!r} {problem}"))
    if problems:
        return problems
    problems += setting_problems(values, given=given)
    if not str(values.get("preference_dataset") or "").strip() and not values.get("ai_feedback") \
            and (given is None or "preference_dataset" in given):
        problems.append(("preference_dataset", "parameter 'preference_dataset' is empty: give a preference JSONL "
                                               "or set ai_feedback=true to label the prompt dataset with AI feedback"))
    if values.get("reward_model_type") == "classifier" and not str(values.get("labeled_dataset") or "").strip():
        problems.append(("reward_model_type", "reward_model_type classifier needs labeled data: set labeled_dataset "
                                              "to a labeled JSONL (input_text or messages, output_text, label)"))
    if target != "local":
        problems += job_machine_problems(values, target, launches_jobs)
    if not problems:  # does the model fit each GPU stage? (rlhf.memory_plan; aliases and local configs)
        from rlhf.memory_plan import pipeline_problems
        problems += pipeline_problems(values)
    return problems


def check_parameters(template: Template, values: Mapping[str, Any], sources: Mapping[str, str],
                     raw_strings: Iterable[str] = (), remote: Optional[str] = None) -> dict[str, Any]:
    """Typed, checked values; raises one UserError listing every problem.

    `sources` names where each value came from (a file or a flag), for the messages; names in
    `raw_strings` hold command-line strings to convert. With `remote` ('vertex' or 'kfp'), dataset
    parameters must be readable there (`_remote_path_problem`), not paths on this machine.
    """
    params = template.parameters
    raw = set(raw_strings)
    problems: list[str] = []
    out: dict[str, Any] = {}
    for name, value in values.items():
        where = sources.get(name, "")
        param = params.get(name)
        if param is None:
            problems.append(f"{where}: unknown parameter {name!r}{_suggest(name, params)} "
                            f"(see the README's parameter table or the template's root.inputDefinitions)")
            continue
        try:
            typed = _from_string(param, value) if name in raw else _typed(param, value)
        except (ValueError, json.JSONDecodeError):
            problems.append(f"{where}: parameter {name!r} must be {_TYPE_WORDS.get(param.type, param.type)}, "
                            f"got {value!r}")
            continue
        if typed is not None:  # null in a parameter file: left unset, as if not given
            out[name] = typed
    for name, param in params.items():
        if param.required and name not in values:
            problems.append(f"{template.path}: required parameter {name!r} has no value: "
                            f"pass --parameter {name}=VALUE or put it in --parameter-file")
    if not problems:  # each step's own checks, on the values it would get (given, else default)
        every = {name: p.default for name, p in params.items() if p.has_default}
        every.update(out)
        for name, problem in value_problems(every, given=set(out), target=template.target,
                                            launches_jobs=template.launches_jobs, remote=remote):
            problems.append(f"{sources.get(name) or template.path}: {problem}")
    if problems:
        raise UserError(f"{len(problems)} problem(s) with the parameter values; nothing was submitted:\n"
                        + "\n".join(f"  {p}" for p in problems))
    return out


def resolve_parameters(template: Template, parameter_file: Optional[str] = None,
                       assignments: Iterable[str] = (), remote: Optional[str] = None) -> dict[str, Any]:
    """Values from `parameter_file`, overridden by `NAME=VALUE` assignments, checked (see above)."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if parameter_file:
        for name, value in load_parameter_file(parameter_file).items():
            values[name], sources[name] = value, parameter_file
    overrides = parse_assignments(assignments)
    for name, value in overrides.items():
        values[name], sources[name] = value, f"--parameter {name}={value}"
    return check_parameters(template, values, sources, raw_strings=overrides, remote=remote)


def parameter_table(template: Template, order: Optional[Iterable[str]] = None) -> str:
    """A Markdown table of every parameter: name, type, default and the description compiled in;
    in `order` (the pipeline signature's) when given, else alphabetical (the YAML's)."""
    declared = template.spec["root"]["inputDefinitions"]["parameters"]
    params = template.parameters
    names = [n for n in (order or ()) if n in params] + sorted(set(params) - set(order or ()))
    words = {STRING: "str", INTEGER: "int", DOUBLE: "float", BOOLEAN: "bool", LIST: "list", STRUCT: "dict"}
    rows = ["| parameter | type | default | description |", "|---|---|---|---|"]
    for name in names:
        param = params[name]
        if param.has_default:
            default = f"`{json.dumps(param.default)}`"
        else:
            default = "*(none)*" if param.optional else "**required**"
        text = " ".join(str(declared[name].get("description", "")).split()).replace("|", "\\|")
        rows.append(f"| `{name}` | {words.get(param.type, param.type)} | {default} | {text} |")
    return "\n".join(rows)
