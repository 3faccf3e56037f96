"""The Triton model's request and response tensors, declared once.

`config.pbtxt`, the model that serves them (serving/model.py) and the client (serving/client.py)
all read these tables; nothing else spells a tensor name. One request carries one chunk
(FRAMES + PCM), one QUESTION, or neither (a bare START or END); the sequence batcher adds the
controls (START, END, CORRID) to every request.

Text travels as UTF-8 bytes in UINT8 tensors, not as Triton's BYTES type: tensors cross the
Python backend through DLPack (see serving/model.py), which has no string dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

# dtype here -> (config.pbtxt data_type, tritonclient datatype)
TRITON_TYPES = {
    "uint8": ("TYPE_UINT8", "UINT8"),
    "int32": ("TYPE_INT32", "INT32"),
    "int64": ("TYPE_INT64", "INT64"),
    "uint64": ("TYPE_UINT64", "UINT64"),
    "float32": ("TYPE_FP32", "FP32"),
}


@dataclass(frozen=True)
class WireTensor:
    name: str
    dtype: str                 # a key of TRITON_TYPES (numpy name)
    axes: tuple[str, ...]      # "frames", "samples", ... are dynamic (-1); "height"/"width" from the export

    def dims(self, resolution: tuple[int, int]) -> list[int]:
        """config.pbtxt dims: the export's frame size for height/width, -1 for every other axis."""
        sizes = {"height": resolution[0], "width": resolution[1], "rgb": 3, "one": 1}
        return [sizes.get(axis, -1) for axis in self.axes]

    @property
    def pbtxt_type(self) -> str:
        return TRITON_TYPES[self.dtype][0]

    @property
    def client_type(self) -> str:
        return TRITON_TYPES[self.dtype][1]


# every input is optional: a request is a chunk, a question, or only sequence controls
INPUTS = (
    WireTensor("FRAMES", "uint8", ("frames", "height", "width", "rgb")),   # RGB at 2 fps
    WireTensor("PCM", "float32", ("samples",)),                            # mono 16 kHz, the span of FRAMES
    WireTensor("QUESTION", "uint8", ("utf8_bytes",)),
    WireTensor("MAX_NEW_TOKENS", "int32", ("one",)),
)

# every response carries all of them (empty where they do not apply)
OUTPUTS = (
    WireTensor("TEXT", "uint8", ("utf8_bytes",)),           # one streamed piece of the answer
    WireTensor("TOKEN_IDS", "int64", ("tokens",)),          # the whole answer, on the request's last response
    WireTensor("KEPT_VIDEO", "int32", ("chunks",)),         # per chunk completed by this request
    WireTensor("KEPT_AUDIO", "int32", ("chunks",)),
    WireTensor("OPEN_STREAMS", "int32", ("one",)),          # sessions this model instance holds now
)

# sequence batcher controls: name -> (control kind, data type)
CONTROLS = (
    ("START", "CONTROL_SEQUENCE_START"),
    ("END", "CONTROL_SEQUENCE_END"),
    ("CORRID", "CONTROL_SEQUENCE_CORRID"),
)

MODEL_NAME = "omnisift"
DEFAULT_MAX_NEW_TOKENS = 64
