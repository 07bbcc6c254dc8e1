"""Training fields that need a package setdpo does not install, checked before transformers
reads them.

transformers finds out late, and not as an input error: `--deepspeed FILE` without deepspeed
raised `PackageNotFoundError` from `TrainingArguments.__post_init__` after building its global
DeepSpeed configuration (a later `from_pretrained` in the same process then failed on it);
`report_to: wandb`, a bitsandbytes `optim` or a `torch_compile_backend` failed only once the
model had loaded. `check_optional_packages` runs first in the configuration's `__post_init__`
and raises `InputError` naming the field, the package and the command that installs it.

FSDP needs no package but a distributed launch (transformers refuses it in one process, after
setting `FSDP_CPU_RAM_EFFICIENT_LOADING` in the environment): it is refused here too.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

from setdpo.errors import InputError


@dataclass(frozen=True)
class Package:
    """An optional package: the module that shows it is installed, how to install it, and
    modules that serve instead (tensorboardX for tensorboard)."""

    module: str
    install: str
    instead: tuple[str, ...] = ()


def _pip(name: str) -> str:
    return f"pip install {name}"


_BITSANDBYTES = Package("bitsandbytes", _pip("bitsandbytes"))
_GALORE = Package("galore_torch", _pip("galore-torch"))
_APOLLO = Package("apollo_torch", _pip("apollo-torch"))
_LOMO = Package("lomo_optim", _pip("lomo-optim"))
_SCHEDULEFREE = Package("schedulefree", _pip("schedulefree"))
_TORCH_XLA = Package("torch_xla", _pip("torch-xla"))
_TENSORRT = Package("torch_tensorrt", _pip("torch-tensorrt"))

DEEPSPEED = Package("deepspeed", _pip("deepspeed"))
# `optim` values (transformers' OptimizerNames) -> the package the optimizer comes from.
OPTIMIZERS: dict[str, Package] = {
    **dict.fromkeys(
        ["adamw_bnb_8bit", "adamw_8bit", "ademamix", "ademamix_8bit", "lion_8bit", "lion_32bit",
         "paged_adamw_32bit", "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit",
         "paged_lion_32bit", "paged_lion_8bit", "rmsprop_bnb", "rmsprop_bnb_8bit",
         "rmsprop_bnb_32bit"],
        _BITSANDBYTES,
    ),
    **dict.fromkeys(
        ["galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
         "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise"],
        _GALORE,
    ),
    **dict.fromkeys(["apollo_adamw", "apollo_adamw_layerwise"], _APOLLO),
    **dict.fromkeys(["lomo", "adalomo"], _LOMO),
    **dict.fromkeys(["schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd"],
                    _SCHEDULEFREE),
    **dict.fromkeys(["adamw_torch_4bit", "adamw_torch_8bit"], Package("torchao", _pip("torchao"))),
    "grokadamw": Package("grokadamw", _pip("grokadamw")),
    "stable_adamw": Package("optimi", _pip("torch-optimi")),
    "adamw_anyprecision": Package("torchdistx", _pip("torchdistx")),
    "adamw_torch_xla": _TORCH_XLA,
    "adamw_torch_npu_fused": Package("torch_npu", _pip("torch-npu")),
}  # fmt: skip
# `report_to` values (transformers' INTEGRATION_TO_CALLBACK) -> the tracker's package.
TRACKERS: dict[str, Package] = {
    **{name: Package(name, _pip(name)) for name in
       ["wandb", "mlflow", "neptune", "clearml", "dagshub", "dvclive", "codecarbon", "swanlab",
        "trackio"]},
    "tensorboard": Package("tensorboard", _pip("tensorboard"), instead=("tensorboardX",)),
    "comet_ml": Package("comet_ml", _pip("comet-ml")),
    "flyte": Package("flytekit", _pip("flytekit")),
    "azure_ml": Package("azureml.core", _pip("azureml-core")),
}  # fmt: skip
# `torch_compile_backend` values whose backend lives in another package.
COMPILE_BACKENDS: dict[str, Package] = {
    "onnxrt": Package("onnxruntime", _pip("onnxruntime")),
    "openxla": _TORCH_XLA,
    "openxla_eval": _TORCH_XLA,
    "tvm": Package("tvm", _pip("apache-tvm")),
    "ipex": Package("intel_extension_for_pytorch", _pip("intel-extension-for-pytorch")),
    "tensorrt": _TENSORRT,
    "torch_tensorrt": _TENSORRT,
}


def installed(module: str) -> bool:
    """Whether `module` can be imported (found, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _require(option: str, value: Any, package: Package) -> None:
    if not any(map(installed, (package.module, *package.instead))):
        raise InputError(
            f"{option} {value!r} needs the {package.module} package, which is not installed: "
            f"{package.install}"
        )


def _text(value: Any) -> Any:
    """An enum's value (`OptimizerNames.ADAMW_BNB` -> ``"adamw_bnb_8bit"``), else `value`."""
    return getattr(value, "value", value)


def check_optional_packages(args: Any) -> None:
    """Refuse, as `InputError`, the fields of `args` (a `TrainingArguments` before its
    `__post_init__`) that need a package that is not installed or a launch that is not there."""
    if args.deepspeed:
        _require("deepspeed (--deepspeed)", args.deepspeed, DEEPSPEED)
    optim = _text(args.optim)
    if isinstance(optim, str) and optim in OPTIMIZERS:
        _require("optim (--optim)", optim, OPTIMIZERS[optim])
    report_to = args.report_to if isinstance(args.report_to, list) else [args.report_to]
    for tracker in report_to:
        if isinstance(tracker, str) and tracker in TRACKERS:
            _require("report_to (--report-to)", tracker, TRACKERS[tracker])
    backend = args.torch_compile_backend
    if isinstance(backend, str) and backend in COMPILE_BACKENDS:
        _require("torch_compile_backend (--torch-compile-backend)", backend,
                 COMPILE_BACKENDS[backend])  # fmt: skip
    elif isinstance(backend, str):
        _check_backend(backend)
    if args.fsdp and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise InputError(
            f"fsdp (--fsdp) {args.fsdp!r} shards the model over processes and needs a "
            f"distributed launch: torchrun --nproc_per_node N -m setdpo train ..."
        )


def _check_backend(backend: str) -> None:
    """A `torch.compile` backend torch knows (`torch._dynamo.list_backends`)."""
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise InputError(
            f"torch_compile_backend (--torch-compile-backend) {backend!r} is not a torch.compile "
            f"backend; known: {', '.join(sorted(set(known) | set(COMPILE_BACKENDS)))}"
        )
