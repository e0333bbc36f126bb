#!/usr/bin/env python3
"""A persistent lm-evaluation-harness scorer for evomerge's command evaluator.

Start it with `persistent = true` (see README "External tools"):

    [[evaluators]]
    kind = "command"
    persistent = true
    timeout_s = 1800
    command = "python evaluators/command/scripts/lm_eval_server.py --tasks gsm8k --metric exact_match,strict-match --limit 200"

It builds one lm_eval HFLM for the first candidate, then for each request line on stdin
({"model_dir": ..., "split": ..., "seed": ..., "devices": [...], ...}) it swaps the
candidate's weights into that same model in place (model.load_state_dict from the folder's
safetensors files, no model reload) and runs lm_eval.simple_evaluate; it answers one JSON
line on stdout: {"fitness": x, "metrics": {...}} or {"error": "..."}. A candidate whose
config.json differs in shape (a layer-path merge with another layer count) gets a full
reload instead. Everything else it prints goes to stderr (stdout carries only answers).

Needs: torch, transformers, safetensors, lm_eval >= 0.4.
"""

import argparse
import json
import os
import sys
import time
import traceback

# Shape-defining config keys: equal keys mean the weights can be swapped in place.
SHAPE_KEYS = (
    "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "vocab_size", "head_dim",
    "tie_word_embeddings", "input_layers", "input_scales",
)


def log(*a):
    print("[lm_eval_server]", *a, file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--metric", required=True,
                   help="fitness: TASK/METRIC or METRIC (of the first task), as lm-eval names it, e.g. exact_match,strict-match or acc,none")
    p.add_argument("--limit", type=float, default=None, help="items per task (lm-eval --limit)")
    p.add_argument("--num_fewshot", type=int, default=None)
    p.add_argument("--batch_size", default="1")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default="auto", help="torch dtype of the model (default: the checkpoint's)")
    p.add_argument("--include_path", default=None, help="folder of custom task YAMLs")
    p.add_argument("--trust_remote_code", action="store_true",
                   help="for layer-path candidates with scaled hops (their modeling file)")
    p.add_argument("--seed_from_request", action="store_true",
                   help="pass the request's seed to lm-eval (random/numpy/torch/fewshot seeds)")
    return p.parse_args()


def shape_of(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    return {k: c.get(k) for k in SHAPE_KEYS}


def load_state(model_dir):
    from safetensors.torch import load_file
    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    if not files:
        raise RuntimeError(f"{model_dir} has no .safetensors files")
    state = {}
    for f in files:
        state.update(load_file(os.path.join(model_dir, f)))
    return state


class Scorer:
    def __init__(self, args):
        import torch
        from lm_eval.tasks import TaskManager
        self.args = args
        self.torch = torch
        self.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tasks = [t for t in args.tasks.split(",") if t]
        self.task_manager = TaskManager(include_path=args.include_path)
        self.lm = None
        self.shape = None

    def build(self, model_dir):
        from lm_eval.models.huggingface import HFLM
        t = time.time()
        self.lm = HFLM(pretrained=model_dir, device=self.device, dtype=self.args.dtype,
                       batch_size=self.args.batch_size,
                       trust_remote_code=self.args.trust_remote_code)
        self.shape = shape_of(model_dir)
        log(f"built the model from {model_dir} in {time.time() - t:.2f} s")

    def swap(self, model_dir):
        """Load the candidate's weights into the model in place."""
        model = self.lm.model
        state = load_state(model_dir)
        own = model.state_dict()
        with self.torch.no_grad():
            missing = [k for k in own if k not in state]
            # A tied head is not in the file: it follows the embeddings.
            tied = getattr(model.config, "tie_word_embeddings", False)
            missing = [k for k in missing if not (tied and k == "lm_head.weight")]
            if missing:
                raise RuntimeError(f"{model_dir}: no tensor for {', '.join(missing[:5])}")
            unexpected = [k for k in state if k not in own]
            if unexpected:
                raise RuntimeError(f"{model_dir}: tensors the model does not have: {', '.join(unexpected[:5])}")
            model.load_state_dict(state, strict=False)
        model.eval()

    def score(self, req):
        import lm_eval
        model_dir = req["model_dir"]
        if self.lm is None or shape_of(model_dir) != self.shape:
            self.build(model_dir)
        else:
            t = time.time()
            self.swap(model_dir)
            log(f"swapped in {req.get('label', model_dir)} in {time.time() - t:.3f} s")
        kw = {}
        if self.args.seed_from_request:
            s = int(req.get("seed", 0))
            kw = dict(random_seed=s, numpy_random_seed=s, torch_random_seed=s, fewshot_random_seed=s)
        limit = self.args.limit
        if limit is not None and limit >= 1:
            limit = int(limit)
        out = lm_eval.simple_evaluate(model=self.lm, tasks=self.tasks, limit=limit,
                                      num_fewshot=self.args.num_fewshot,
                                      task_manager=self.task_manager, log_samples=False, **kw)
        results = out["results"]
        task, metric = (self.args.metric.split("/", 1) if "/" in self.args.metric
                        else (self.tasks[0], self.args.metric))
        if task not in results:
            raise RuntimeError(f"no results for task {task!r} (have {', '.join(results)})")
        r = results[task]
        if not isinstance(r.get(metric), (int, float)):
            have = ", ".join(k for k, v in r.items() if isinstance(v, (int, float)))
            raise RuntimeError(f"task {task!r} has no numeric {metric!r} (it has {have})")
        metrics = {}
        for t, vals in results.items():
            for k, v in vals.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    metrics[k if t == task else f"{t}/{k}"] = v
        return {"fitness": float(r[metric]), "metrics": metrics}


def main():
    args = parse_args()
    # stdout carries only answer lines: everything lm-eval, transformers or tqdm print goes to
    # stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    scorer = Scorer(args)
    log(f"ready (tasks {scorer.tasks}, device {scorer.device})")
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            t = time.time()
            answer = scorer.score(req)
            log(f"{req.get('label', '')}: {answer['fitness']} in {time.time() - t:.2f} s")
        except Exception as e:  # one candidate's failure is a failed row, not the end
            traceback.print_exc(file=sys.stderr)
            answer = {"error": f"{type(e).__name__}: {e}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    log("stdin closed, exiting")


if __name__ == "__main__":
    main()
