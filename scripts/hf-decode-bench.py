"""Hugging Face transformers baseline for the CUDA decode benchmark (docs/benchmarks.md, issue 7).

Random-initialised model from the same config (bfloat16 on the GPU), batch 1: prefill a random prompt of
CONTEXT tokens, then time greedy decode steps with the KV cache, for the eager and the SDPA attention.
Usage (on the GPU machine): python3 scripts/hf-decode-bench.py bench/configs/llama-3.1-8b.json 4096 32
"""
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main():
    config_path, context, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0)
    for impl in ("eager", "sdpa"):
        config = AutoConfig.from_pretrained(config_path)
        config._attn_implementation = impl
        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.eval()
        ids = torch.randint(0, config.vocab_size, (1, context), device="cuda")
        with torch.no_grad():
            out = model(ids, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1:].argmax(-1)
            for _ in range(3):  # warm-up
                out = model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                out = model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        print(f"transformers {impl} ({model.config._attn_implementation}), context {context}: "
              f"{seconds / steps * 1e3:.2f} ms/token, {steps / seconds:.1f} tokens/s", flush=True)
        del model, past, out
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
