"""`rlhf submit`: check parameter values against a compiled template, check that the images,
datasets, pipeline-root bucket and service account the run needs are there (`rlhf.preflight`), then
submit it to Vertex AI Pipelines (`--project/--location/--pipeline-root`) or to a Kubeflow Pipelines
cluster (`--kfp-host`)."""

from __future__ import annotations

import argparse
import re
import sys

from rlhf.errors import UserError

HELP = ("submit a compiled pipeline to Vertex AI (--project, --location, --pipeline-root) or to a "
        "Kubeflow Pipelines cluster (--kfp-host); parameter values, images, datasets, the pipeline-root "
        "bucket and the service account are checked first")

_KMS_KEY = re.compile(r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$")
_VERTEX_ONLY = ("project", "location", "network", "encryption_spec_key_name", "label", "api_endpoint")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--template", required=True, help="compiled pipeline YAML (from `rlhf compile`)")
    parser.add_argument("--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="a pipeline parameter value; repeatable; overrides --parameter-file")
    parser.add_argument("--parameter-file", metavar="FILE.json|.yaml",
                        help="pipeline parameter values as a JSON or YAML mapping (Vertex's parameter_values)")
    parser.add_argument("--wait", action="store_true", help="wait for the run to finish; exit 1 unless it succeeds")
    parser.add_argument("--no-cache", action="store_true", help="run every task again (caching is on by default)")
    parser.add_argument("--pipeline-root", help="where task outputs go: gs://BUCKET/DIR (required for Vertex AI)")
    parser.add_argument("--service-account", help="service account (Vertex) or Kubernetes service account (KFP) the run uses")
    parser.add_argument("--skip-preflight", action="store_true",
                        help="do not check images, datasets, the pipeline-root bucket and the service account "
                             "over the network before sending (e.g. from a private network); a template naming "
                             "the placeholder image registry is still refused on Vertex AI")

    vertex = parser.add_argument_group("Vertex AI")
    vertex.add_argument("--project", help="Google Cloud project id")
    vertex.add_argument("--location", help="region, e.g. us-central1")
    vertex.add_argument("--network", help="VPC network to peer with: projects/NUMBER/global/networks/NAME")
    vertex.add_argument("--encryption-spec-key-name", metavar="KEY",
                        help="Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) for the run and, unless "
                             "the encryption_spec_key_name parameter is set, for what the pipeline creates")
    vertex.add_argument("--label", action="append", default=[], metavar="K=V", help="a run label; repeatable")
    vertex.add_argument("--display-name", help="the run's display name (default: the template's name)")
    vertex.add_argument("--api-endpoint", metavar="URL",
                        help="Vertex API endpoint for private or regional endpoints (REST transport; an "
                             "http:// endpoint is spoken to without credentials)")

    kfp = parser.add_argument_group("Kubeflow Pipelines")
    kfp.add_argument("--kfp-host", metavar="URL", help="the KFP API, e.g. http://localhost:8080 after a port-forward")
    kfp.add_argument("--experiment", help="experiment to file the run under (created if missing)")
    kfp.add_argument("--run-name", help="the run's name")


def _check_destination(args, template) -> None:
    if args.kfp_host:
        given = [n for n in _VERTEX_ONLY if getattr(args, n)]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise UserError(f"{flags} apply to Vertex AI only; drop them when submitting with --kfp-host")
        if not re.match(r"^https?://", args.kfp_host):
            raise UserError(f"--kfp-host {args.kfp_host!r}: expected a URL such as http://localhost:8080")
    else:
        missing = [f"--{n.replace('_', '-')}" for n in ("project", "location", "pipeline_root")
                   if not getattr(args, n)]
        if missing:
            raise UserError(f"submitting to Vertex AI needs {', '.join(missing)} "
                            f"(or give --kfp-host URL to submit to a Kubeflow Pipelines cluster)")
        if args.experiment or args.run_name:
            raise UserError("--experiment and --run-name apply to Kubeflow Pipelines (--kfp-host); "
                            "use --display-name and --label on Vertex AI")
        if args.encryption_spec_key_name and not _KMS_KEY.match(args.encryption_spec_key_name):
            raise UserError(f"--encryption-spec-key-name {args.encryption_spec_key_name!r}: expected "
                            f"projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY")
    if args.pipeline_root:
        from rlhf.parameters import gcs_uri_problem
        problem = gcs_uri_problem(args.pipeline_root) if args.pipeline_root.startswith("gs:") or not args.kfp_host else None
        if problem:
            raise UserError(f"--pipeline-root {args.pipeline_root!r}: {problem}")
    wanted = "kfp" if args.kfp_host else "vertex"
    if template.target and template.target != wanted:
        raise UserError(f"{args.template} was compiled for {template.target!r}, not for {wanted!r}: "
                        f"compile it with `rlhf compile --target {wanted} --output FILE`")


def _preflight(args, template, values) -> None:
    """Refuse, before sending, what would fail the run after machines were provisioned."""
    from rlhf import preflight

    if args.skip_preflight:
        print("warning: --skip-preflight: images, datasets, the pipeline-root bucket and the service "
              "account were not checked", file=sys.stderr)
    problems = preflight.preflight(
        template, parameter_values=values, pipeline_root=args.pipeline_root,
        service_account=args.service_account, project=args.project, location=args.location,
        target="kfp" if args.kfp_host else "vertex", network=not args.skip_preflight)
    for problem in problems:
        if not problem.blocking:
            print(f"warning: {problem}", file=sys.stderr)
    preflight.check(problems)


def run(args: argparse.Namespace) -> int:
    from rlhf import parameters, submit

    template = parameters.load_template(args.template)
    _check_destination(args, template)
    labels = submit.parse_labels(args.label)
    values = parameters.resolve_parameters(template, args.parameter_file, args.parameter,
                                           remote="kfp" if args.kfp_host else "vertex")
    if (args.encryption_spec_key_name and "encryption_spec_key_name" in template.parameters
            and not values.get("encryption_spec_key_name")):
        values["encryption_spec_key_name"] = args.encryption_spec_key_name
    _preflight(args, template, values)
    enable_caching = False if args.no_cache else None

    if args.kfp_host:
        result = submit.submit_to_kfp(
            args.template, host=args.kfp_host, parameter_values=values, experiment=args.experiment,
            run_name=args.run_name, pipeline_root=args.pipeline_root, enable_caching=enable_caching,
            service_account=args.service_account, wait=args.wait)
    else:
        result = submit.submit_to_vertex(
            args.template, project=args.project, location=args.location, pipeline_root=args.pipeline_root,
            parameter_values=values, service_account=args.service_account, network=args.network,
            encryption_spec_key_name=args.encryption_spec_key_name, labels=labels,
            display_name=args.display_name, enable_caching=enable_caching,
            api_endpoint=args.api_endpoint, wait=args.wait)
    print(f"submitted: {result.name}")
    if result.url:
        print(f"follow it at: {result.url}")
    if args.wait:
        print(f"final state: {result.state}")
        return 0 if "SUCCEEDED" in result.state.upper() else 1
    return 0
