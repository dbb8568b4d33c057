"""Trim a CRD's openAPIV3Schema to what tests/test_jobs_kubernetes.py validates: no descriptions, pod
specs cut to the fields the launcher writes (plus a few neighbours), objects under `spec` closed
(additionalProperties: false, as `kubectl --validate=strict` refuses unknown fields). How the files in
tests/data/ were made:

    git -C TRAINER show v2.3.0:manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml > trainjobs.yaml
    python scripts/trim_crd_schema.py trainjob trainjobs.yaml v1alpha1 "SOURCE NOTE" > tests/data/trainjob-v1alpha1.schema.json
    git -C TRAINING_OPERATOR show v1.9.0:manifests/base/crds/kubeflow.org_pytorchjobs.yaml > pytorchjobs.yaml
    python scripts/trim_crd_schema.py pytorchjob pytorchjobs.yaml v1 "SOURCE NOTE" > tests/data/pytorchjob-v1.schema.json

(TRAINER: a clone of github.com/kubeflow/trainer; TRAINING_OPERATOR: of github.com/kubeflow/training-operator.)
"""
import json, sys, yaml

POD_KEEP = {"containers", "serviceAccountName", "nodeSelector", "tolerations", "volumes", "affinity"}
CONTAINER_KEEP = {"name", "image", "command", "args", "env", "resources", "ports", "volumeMounts"}

def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k != "description"}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x

def cut_pod(pod):
    props = pod["properties"]
    pod["properties"] = {k: v for k, v in props.items() if k in POD_KEEP}
    for k in ("affinity", "volumes", "tolerations"):
        if k in pod["properties"]:
            pod["properties"][k] = {"type": pod["properties"][k]["type"], "x-rlhf-trimmed": True}
    if "containers" in pod["properties"]:
        c = pod["properties"]["containers"]["items"]
        c["properties"] = {k: v for k, v in c["properties"].items() if k in CONTAINER_KEEP}
        for k in ("volumeMounts",):
            c["properties"][k] = {"type": "array", "x-rlhf-trimmed": True}
        env = c["properties"]["env"]["items"]
        env["properties"] = {k: v for k, v in env["properties"].items() if k in ("name", "value")}
    return pod

def close(x):
    if isinstance(x, dict):
        for v in x.values():
            close(v)
        if x.get("type") == "object" and "properties" in x and "additionalProperties" not in x \
                and not x.get("x-kubernetes-preserve-unknown-fields"):
            x["additionalProperties"] = False
    elif isinstance(x, list):
        for v in x:
            close(v)
    return x

kind, path, version, source = sys.argv[1:5]
crd = yaml.safe_load(open(path))
v = next(v for v in crd["spec"]["versions"] if v["name"] == version)
schema = strip(v["schema"]["openAPIV3Schema"])
if kind == "trainjob":
    spec = schema["properties"]["spec"]
    spec["properties"].pop("initializer")
    rj = spec["properties"]["runtimePatches"]["items"]["properties"]["trainingRuntimeSpec"]["properties"]["template"]["properties"]["spec"]["properties"]["replicatedJobs"]["items"]
    pod = rj["properties"]["template"]["properties"]["spec"]["properties"]["template"]["properties"]["spec"]
    cut_pod(pod)
    status = schema["properties"]["status"]["properties"]
    status.pop("trainerStatus", None)
    status["jobsStatus"] = {"type": "array", "x-rlhf-trimmed": True}
else:
    spec = schema["properties"]["spec"]
    spec["properties"]["elasticPolicy"] = {"type": "object", "x-rlhf-trimmed": True}
    rs = spec["properties"]["pytorchReplicaSpecs"]["additionalProperties"]
    cut_pod(rs["properties"]["template"]["properties"]["spec"])
    rp = spec["properties"]["runPolicy"]["properties"]
    rp["schedulingPolicy"] = {"type": "object", "x-rlhf-trimmed": True}
    schema["properties"]["status"]["properties"]["replicaStatuses"] = {"type": "object", "x-rlhf-trimmed": True}
schema["properties"]["metadata"] = {"type": "object"}
close(schema["properties"]["spec"])
out = {"$comment": source, "group": crd["spec"]["group"], "kind": crd["spec"]["names"]["kind"],
       "plural": crd["spec"]["names"]["plural"], "version": version, "openAPIV3Schema": schema}
json.dump(out, sys.stdout, indent=1, sort_keys=True)
