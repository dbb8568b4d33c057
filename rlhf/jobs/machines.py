"""Vertex AI machine types for an accelerator type and count (a custom job names its machine; a
pipeline task only asks for GPUs, CPUs and memory and Vertex picks one).

From Vertex AI's "Configure compute resources for custom training" table (GPUs per machine type);
each entry is the smallest machine of the family that carries that many GPUs with room for the
data loader (an L4 on g2-standard-12, not the 4-vCPU g2-standard-4).
"""

from __future__ import annotations

import re
from typing import Optional

from rlhf.errors import UserError

# accelerator type -> {GPUs per machine: machine type}
MACHINE_TYPES: dict[str, dict[int, str]] = {
    "NVIDIA_L4": {1: "g2-standard-12", 2: "g2-standard-24", 4: "g2-standard-48", 8: "g2-standard-96"},
    "NVIDIA_TESLA_T4": {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32"},
    "NVIDIA_TESLA_V100": {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32", 8: "n1-standard-64"},
    "NVIDIA_TESLA_A100": {1: "a2-highgpu-1g", 2: "a2-highgpu-2g", 4: "a2-highgpu-4g", 8: "a2-highgpu-8g",
                          16: "a2-megagpu-16g"},
    "NVIDIA_A100_80GB": {1: "a2-ultragpu-1g", 2: "a2-ultragpu-2g", 4: "a2-ultragpu-4g", 8: "a2-ultragpu-8g"},
    "NVIDIA_H100_80GB": {8: "a3-highgpu-8g"},
    "NVIDIA_H100_MEGA_80GB": {8: "a3-megagpu-8g"},
    "NVIDIA_H200_141GB": {8: "a3-ultragpu-8g"},
    "NVIDIA_B200": {8: "a4-highgpu-8g"},
}

# family-shape-size: n1-standard-8, g2-standard-48, a2-ultragpu-8g, a3-highgpu-8g, n1-highmem-16 ...
MACHINE_TYPE = re.compile(r"^[a-z][a-z0-9]*-[a-z]+-\d+[a-z]?$")


def machine_type_problem(value: str) -> Optional[str]:
    """What is wrong with a `*_machine_type` parameter ("" is fine: chosen from the GPUs)."""
    if not value or MACHINE_TYPE.match(value):
        return None
    return (f"must be a Vertex AI machine type such as a3-highgpu-8g, a2-ultragpu-8g or g2-standard-48 "
            f"(or empty: chosen from the accelerator type and count), got {value!r}")


def machine_type_for(accelerator_type: str, accelerator_count: int, machine_type: str = "",
                     what: str = "machine_type") -> str:
    """`machine_type` when given, else the machine that carries `accelerator_count` GPUs of
    `accelerator_type`; a UserError naming the parameter when there is none."""
    if machine_type:
        problem = machine_type_problem(machine_type)
        if problem:
            raise UserError(f"{what} {problem}")
        return machine_type
    counts = MACHINE_TYPES.get(accelerator_type)
    if counts is None:
        raise UserError(f"no machine type is known for accelerator {accelerator_type!r}: set {what} "
                        f"(known accelerators: {', '.join(MACHINE_TYPES)})")
    if accelerator_count not in counts:
        shown = ", ".join(f"{n} ({m})" for n, m in counts.items())
        raise UserError(f"{accelerator_type} machines carry {shown} GPUs, not {accelerator_count}: change the "
                        f"accelerator count or set {what}")
    return counts[accelerator_count]
