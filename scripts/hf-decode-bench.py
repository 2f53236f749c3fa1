"""Hugging Face transformers baseline for the CUDA decode benchmark (docs/benchmarks.md, issue 7).

Random-initialised LlamaForCausalLM from the same config (bfloat16 on the GPU). For each attention implementation
(eager, sdpa), batch size and context: the KV cache (transformers' DynamicCache) is filled with random bfloat16 keys
and values up to the context, as the KvSharp benchmark fills its cache (decode cost depends on the length, not on the
values; a real prefill of 8 x 32K tokens through the eager attention would not fit in memory), then greedy decode steps
are timed with the cache growing as in generation.
Usage (on the GPU machine): python3 scripts/hf-decode-bench.py bench/configs/llama-3.1-8b.json 4096,32768 1,8 16
Prints one line per measurement and a markdown table at the end.
"""
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache


def random_cache(config, batch, context, generator):
    try:
        cache = DynamicCache(config=config)
    except TypeError:
        cache = DynamicCache()
    kv_heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for layer in range(config.num_hidden_layers):
        shape = (batch, kv_heads, context, head_dim)
        k = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=generator)
        v = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=generator)
        cache.update(k, v, layer)
    return cache


def decode(model, cache, batch, steps, generator):
    token = torch.randint(0, model.config.vocab_size, (batch, 1), device="cuda", generator=generator)
    with torch.no_grad():
        for _ in range(2):  # warm-up
            out = model(token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            out = model(token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps


def main():
    config_path = sys.argv[1]
    contexts = [int(c) for c in sys.argv[2].split(",")]
    batches = [int(b) for b in sys.argv[3].split(",")]
    steps = int(sys.argv[4])
    torch.manual_seed(0)
    generator = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for impl in ("eager", "sdpa"):
        config = AutoConfig.from_pretrained(config_path)
        config._attn_implementation = impl
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.eval()
        for batch in batches:
            for context in contexts:
                cache = None
                try:
                    cache = random_cache(model.config, batch, context, generator)
                    seconds = decode(model, cache, batch, steps, generator)
                    line = (impl, batch, context, f"{seconds * 1e3:.2f}", f"{batch / seconds:.1f}")
                except torch.OutOfMemoryError:
                    line = (impl, batch, context, "out of memory", "")
                del cache
                torch.cuda.empty_cache()
                rows.append(line)
                print(f"transformers {impl} ({model.config._attn_implementation}) batch {batch} context {context}: "
                      f"{line[3]} ms/step, {line[4]} tokens/s", flush=True)
        del model
        torch.cuda.empty_cache()
    print()
    print("| attention | batch | context | ms/step | tokens/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


if __name__ == "__main__":
    main()
