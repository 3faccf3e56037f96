"""Real-size export cost: peak host memory and time of `export` at the real 3B / 7B widths (issue 21).

Nothing real-size can be downloaded, so a model folder with *random* weights is written at the real
widths of tests/model/configs/qwen2_5_omni_{3b,7b}.json (hidden size, heads, intermediate size,
vocab, tower widths) but only --layers decoder / vision / audio layers each. `export` runs in a
child process (the CLI, as a user runs it; ratio 1, 112x84, so no selector and small towers
inputs); its peak RSS (getrusage of the child) and wall time are measured per layer count, and a
straight line through them (peak = a + b * layers, time likewise: every layer adds the same
weights and the same graph nodes) predicts the full depth (3B: 36 layers, 7B: 28; the towers'
32 layers are counted by the same per-layer slope, a stated approximation since a tower layer is
smaller than a decoder layer: the prediction is an upper bound for the towers' share).

Run one size at a time (the machine is shared):

    python -m benchmarks.export_cost --size 3b --layers 1 2 --weights fp16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "model" / "configs"
FULL_LAYERS = {"3b": 36, "7b": 28}


def thinker_config(size: str, layers: int) -> dict:
    """The real thinker config with `layers` decoder, vision and audio layers."""
    config = json.loads((CONFIGS / f"qwen2_5_omni_{size}.json").read_text())["thinker_config"]
    config["text_config"]["num_hidden_layers"] = layers
    config["vision_config"]["depth"] = layers
    config["vision_config"]["fullatt_block_indexes"] = [layers - 1]
    config["audio_config"]["encoder_layers"] = layers
    return config


def write_folder(folder: Path, config: dict, seed: int = 0) -> int:
    """A thinker-only model folder with random fp16 weights (std 0.02, norms 1); its weight bytes."""
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers.modeling_utils import no_init_weights

    from omnisift_edge.model.tokenizer import write_tiny_tokenizer

    transformers.logging.set_verbosity_error()
    cfg = transformers.Qwen2_5OmniThinkerConfig(**{k: v for k, v in config.items() if k != "model_type"})
    with no_init_weights(), torch.device("meta"):
        thinker = transformers.Qwen2_5OmniThinkerForConditionalGeneration(cfg)
    generator = torch.Generator().manual_seed(seed)
    state, total = {}, 0
    for name, param in thinker.named_parameters():
        if "norm" in name and param.dim() == 1:
            tensor = torch.ones(param.shape, dtype=torch.float16)
        else:
            tensor = (torch.randn(param.shape, generator=generator) * 0.02).to(torch.float16)
        state[name] = tensor
        total += tensor.numel() * 2
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tiny_tokenizer(folder)
    return total


def run_export(model: Path, out: Path, dtype: str, weights: str) -> tuple[float, int]:
    """(seconds, peak RSS bytes) of `omnisift-edge export` in a child process."""
    args = [sys.executable, "-m", "omnisift_edge.cli", "export", "--model", str(model), "--dtype", dtype,
            "--weights", weights, "--ratio", "1", "--resolution", "112x84", "--max-context", "1024",
            "--default-chat-template", "-o", str(out)]
    if weights == "int4":
        args += ["--calibration", "rtn"]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"export failed:\n{output[-3000:]}")
    return seconds, usage.ru_maxrss * 1024


def fit(xs, ys) -> tuple[float, float]:
    """(a, b) of y = a + b x through the points (least squares; exact through two)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(FULL_LAYERS), default="3b")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--weights", choices=["fp16", "int4"], default="fp16")
    args = parser.parse_args()
    gb = 2**30
    rows = []
    for layers in args.layers:
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
            config = thinker_config(args.size, layers)
            weight_bytes = write_folder(Path(tmp) / "model", config)
            seconds, peak = run_export(Path(tmp) / "model", Path(tmp) / "out", "fp16", args.weights)
            rows.append((layers, weight_bytes, seconds, peak))
            print(f"{args.size} {args.weights} layers {layers}: weights {weight_bytes / gb:.2f} GB, "
                  f"export {seconds:.0f} s, peak RSS {peak / gb:.2f} GB ({peak / weight_bytes:.2f}x weights)",
                  flush=True)
    if len(rows) < 2:
        return
    full = FULL_LAYERS[args.size]
    a_w, b_w = fit([r[0] for r in rows], [r[1] for r in rows])
    a_t, b_t = fit([r[0] for r in rows], [r[2] for r in rows])
    a_m, b_m = fit([r[0] for r in rows], [r[3] for r in rows])
    weights, seconds, peak = a_w + b_w * full, a_t + b_t * full, a_m + b_m * full
    print(f"per layer: weights {b_w / gb:.3f} GB, time {b_t:.1f} s, peak {b_m / gb:.3f} GB; predicted at "
          f"{full} layers: weights {weights / gb:.1f} GB, export {seconds / 60:.0f} min, peak {peak / gb:.1f} GB "
          f"= {(peak - 2 * gb) / weights:.2f}x weights + 2 GB (goal <= 1.5x + 2 GB)", flush=True)


if __name__ == "__main__":
    main()
