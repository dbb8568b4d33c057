"""KFP component: small decisions the pipeline branches on (`dsl.If` needs a task output or parameter)."""

from typing import Optional

from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def is_given(value: Optional[str] = None) -> bool:
    """True when an optional pipeline parameter (a dataset URI, a resource name) was given and is not
    empty. A component, not a `dsl.If` on the parameter itself, because an optional parameter left
    unset has no value for the condition to compare (Google's pipeline does the same)."""
    return bool(value and value.strip())
