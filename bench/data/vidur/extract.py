"""Extract the per-layer op timings the engine calibration uses from vidur's mlp.csv files.

    python bench/data/vidur/extract.py /work/shared/data/vidur
Writes ops.csv next to itself (stdlib only).
"""

import csv
import sys
from pathlib import Path

FILES = {
    ("a100", "llama-3-8b"): "a100/meta-llama/Meta-Llama-3-8B/mlp.csv",
    ("a100", "llama-3-70b"): "a100/meta-llama/Meta-Llama-3-70B/mlp.csv",
    ("h100", "llama-2-7b"): "h100/meta-llama/Llama-2-7b-hf/mlp.csv",
    ("h100", "llama-2-70b"): "h100/meta-llama/Llama-2-70b-hf/mlp.csv",
}
TOKENS = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096}
OPS = [
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
]


def main(src: Path) -> None:
    out = Path(__file__).parent / "ops.csv"
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["gpu", "model", "num_tokens", "tp", *[f"{op}_ms" for op in OPS]])
        for (gpu, model), rel in FILES.items():
            for r in csv.DictReader(open(src / "profiling" / "compute" / rel)):
                if int(r["num_tokens"]) in TOKENS:
                    w.writerow(
                        [gpu, model, r["num_tokens"], r["num_tensor_parallel_workers"]]
                        + [r[f"time_stats.{op}.median"] for op in OPS]
                    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
