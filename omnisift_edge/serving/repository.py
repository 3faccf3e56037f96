"""The serving stage: an export folder -> a Triton model repository that serves camera streams.

`triton(TritonConfig) -> TritonRepository` writes one stateful Python-backend model
(`omnisift/config.pbtxt` + `omnisift/1/model.py`) under Triton's sequence batcher: one sequence per
camera (START / END / CORRID controls), the camera's `OmniSession` as its state, freed after
`max_sequence_idle_microseconds` of silence, answers streamed back token by token (decoupled
mode). Tensor names and types come from serving/protocol.py, the frame size from the manifest.
The repository appears whole or not at all (`atomic.staged_folder`); in an existing model
repository `--overwrite` replaces only the model this command wrote, never the other models or an
unrelated folder. Its model.py imports omnisift_edge, it does not copy it. Details: docs/serving.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omnisift_edge.artifact.manifest import as_manifest
from omnisift_edge.atomic import staged_folder
from omnisift_edge.errors import UsageError
from omnisift_edge.serving.protocol import CONTROLS, DEFAULT_MAX_NEW_TOKENS, INPUTS, MODEL_NAME, OUTPUTS

SERVING_BACKENDS = ("onnxruntime", "tensorrt")


@dataclass(frozen=True)
class TritonConfig:
    export: Path                       # an export folder (manifest.json, graphs, engines for tensorrt)
    out: Path                          # the model repository to write
    backend: str = "onnxruntime"       # the runtime backend inside the model
    ratio: float | None = None         # one of the export's ratios; None: the first it lists
    device: str = "cpu"                # cpu | cuda (ORT's CUDA provider)
    max_streams: int = 8               # sequences served at once (oldest strategy candidates)
    idle_timeout: float = 60.0         # seconds of silence after which a stream's state is freed
    instances: int = 1                 # model instances (stub processes); a stream stays on one
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS   # answer length when a request does not say
    overwrite: bool = False

    def __post_init__(self):
        object.__setattr__(self, "export", Path(self.export).resolve())
        object.__setattr__(self, "out", Path(self.out))
        if self.backend not in SERVING_BACKENDS:
            raise UsageError(f"--backend must be one of {', '.join(SERVING_BACKENDS)} (got {self.backend!r})")
        if self.max_streams < 1:
            raise UsageError(f"--max-streams must be at least 1 (got {self.max_streams})")
        if not self.idle_timeout > 0:
            raise UsageError(f"--idle-timeout must be a positive number of seconds (got {self.idle_timeout})")
        if self.instances < 1:
            raise UsageError(f"--instances must be at least 1 (got {self.instances})")
        if self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})")


@dataclass(frozen=True)
class TritonRepository:
    folder: Path
    model: str                         # the model name clients address
    config_path: Path
    resolution: tuple[int, int]
    ratio: float


def _pbtxt_tensors(tensors, resolution, *, optional: bool) -> str:
    rows = []
    for t in tensors:
        dims = ", ".join(str(d) for d in t.dims(resolution))
        rows.append(f'  {{ name: "{t.name}" data_type: {t.pbtxt_type} dims: [ {dims} ]'
                    + (" optional: true" if optional else "") + " }")
    return ",\n".join(rows)


def config_pbtxt(cfg: TritonConfig, manifest, ratio: float) -> str:
    """The model's config.pbtxt: tensors from protocol.py, the frame size from the manifest."""
    resolution = as_manifest(manifest).resolution
    controls = []
    for name, kind in CONTROLS:
        detail = "data_type: TYPE_UINT64" if kind == "CONTROL_SEQUENCE_CORRID" else "int32_false_true: [ 0, 1 ]"
        controls.append(f'    {{ name: "{name}" control [ {{ kind: {kind} {detail} }} ] }}')
    params = {"export": str(cfg.export), "backend": cfg.backend, "ratio": repr(ratio), "device": cfg.device,
              "max_new_tokens": str(cfg.max_new_tokens), "max_streams": str(cfg.max_streams)}
    control_rows = ",\n".join(controls)
    parameters = ",\n".join(f'  {{ key: "{k}" value {{ string_value: "{v}" }} }}' for k, v in params.items())
    return f"""# Written by `omnisift-edge triton` from {cfg.export / 'manifest.json'}; regenerate rather than edit.
name: "{MODEL_NAME}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [
{_pbtxt_tensors(INPUTS, resolution, optional=True)}
]
output [
{_pbtxt_tensors(OUTPUTS, resolution, optional=False)}
]
sequence_batching {{
  max_sequence_idle_microseconds: {int(round(cfg.idle_timeout * 1e6))}
  oldest {{ max_candidate_sequences: {cfg.max_streams} max_queue_delay_microseconds: 0 }}
  control_input [
{control_rows}
  ]
}}
instance_group [ {{ count: {cfg.instances} kind: KIND_CPU }} ]
parameters [
{parameters}
]
"""


MODEL_PY = '''"""Generated by `omnisift-edge triton`: the OmniSIFT stream model lives in omnisift_edge.serving.model.

Triton's Python-backend stub starts its interpreter without reading PYTHONPATH, so the entries of
PYTHONPATH (inherited from the server's environment) are put on the import path first: that is how
a server started outside the environment omnisift_edge is installed in still finds it.
"""

import os
import sys

sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]

from omnisift_edge.serving.model import TritonPythonModel  # noqa: E402,F401
'''


def _ratio(manifest, ratio: float | None) -> float:
    ratios = list(manifest.ratio_values)
    if ratio is None:
        return ratios[0]
    if not any(abs(r - ratio) < 1e-9 for r in ratios):
        raise UsageError(f"the export has no compressor for ratio {ratio:g} (it has {', '.join(f'{r:g}' for r in ratios)});"
                         " pass one of those to --ratio or export that ratio")
    return ratio


NOT_OURS = ("{folder} is a model that `omnisift-edge triton` did not write; --overwrite replaces only its own "
            "model: move that model away or choose another -o")


def is_our_model(folder: Path) -> bool:
    """A model folder this command wrote (its model.py starts with our header)."""
    try:
        return (folder / "1" / "model.py").read_text().startswith(MODEL_PY[:40])
    except (OSError, UnicodeDecodeError):
        return False


def _repository_folder(cfg: TritonConfig) -> Path:
    """`cfg.out` if the repository may be written there: absent, empty, or (with --overwrite) a model
    repository (every visible entry a model folder with config.pbtxt); else one line naming the fix."""
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder; choose another -o")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if not cfg.overwrite:
        raise UsageError(f"{out} is not empty; pass --overwrite to replace the {MODEL_NAME} model there, "
                         "or choose another -o")
    strays = sorted(p.name for p in out.iterdir()
                    if not p.name.startswith(".") and not (p.is_dir() and (p / "config.pbtxt").is_file()))
    if strays:
        raise UsageError(f"{out} is not a Triton model repository (it holds {', '.join(strays[:3])}); --overwrite "
                         f"only replaces the {MODEL_NAME} model of a repository: choose another -o")
    return out


def _write_model(model: Path, cfg: TritonConfig, manifest: dict, ratio: float) -> None:
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(config_pbtxt(cfg, manifest, ratio))
    (model / "1" / "model.py").write_text(MODEL_PY)


def triton(cfg: TritonConfig) -> TritonRepository:
    """Write the model repository for `cfg.export` at `cfg.out` (atomically)."""
    from omnisift_edge.artifact.manifest import load_manifest

    if not (cfg.export / "manifest.json").is_file():
        raise UsageError(f"{cfg.export} is not an export folder (no manifest.json); run `omnisift-edge export` first")
    manifest = load_manifest(cfg.export)
    ratio = _ratio(manifest, cfg.ratio)
    out = _repository_folder(cfg)
    if out.is_dir() and any(out.iterdir()):   # replace our model only: other models and files stay
        with staged_folder(out / MODEL_NAME, owned=is_our_model, refuse=NOT_OURS) as staging:
            _write_model(staging, cfg, manifest, ratio)
    else:
        with staged_folder(out) as staging:
            _write_model(staging / MODEL_NAME, cfg, manifest, ratio)
    return TritonRepository(folder=out, model=MODEL_NAME, config_path=out / MODEL_NAME / "config.pbtxt",
                            resolution=manifest.resolution, ratio=ratio)
