"""lm-evaluation-harness bridge: a raylm checkpoint as lm-eval's model `raylm` (install the extra: raylm[eval]).

    raylm lm-eval --model raylm --model_args run=runs/NAME --tasks hellaswag

is lm-eval's own command line (`lm_eval`) with this module imported first: lm-eval finds models only in its own
registry, and importing this module is what registers `raylm` there (lm-eval has no plugin entry point for models).
From Python: `import raylm.training.harness`, then `lm_eval.simple_evaluate(model="raylm", model_args="run=...")`.

model_args: `run` (a run directory, whose latest complete checkpoint is used, or a checkpoint directory; required),
`device` (cpu, cuda, ...), `batch_size` (sequences per forward pass), `max_gen_toks` (generate_until's default).
Scoring is training/tasks.py's: the same tokenization of a context and continuation (lm-eval's), the log-probs
over the tokenizer's real vocabulary, inputs truncated from the left to the model's window; so `raylm eval --tasks`
and lm-eval through this bridge give the same per-example log-likelihoods.
"""

from __future__ import annotations

import sys

import lm_eval.models  # noqa: F401 - lm-eval's own models first: it fills its registry only while that is empty
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from raylm.training.checkpoint import load_model
from raylm.training.tasks import loglikelihoods

GEN_CHUNK = 16  # tokens generated between checks for a stop sequence


@register_model("raylm")
class RaylmLM(TemplateLM):
    """lm-eval's three request kinds on a raylm model: loglikelihood (TemplateLM splits context and continuation
    into tokens and calls _loglikelihood_tokens), loglikelihood_rolling (a document's log-likelihood over disjoint
    windows of the model's length, as lm-eval's hf model does) and generate_until (greedy)."""

    def __init__(self, run: str, device: str = "cpu", batch_size: int | str = 32, max_gen_toks: int = 256, **_ignored) -> None:
        super().__init__()
        device = _usable(device)
        self.model, self.enc, self.state, self.checkpoint = load_model(run, device)
        self._device = device
        self.batch = int(batch_size) if str(batch_size).isdigit() else 32  # lm-eval may pass "auto"
        self.max_gen_toks = int(max_gen_toks)
        self.max_length = self.model.cfg.seq_len

    @property
    def eot_token_id(self) -> int:
        return self.enc.eot_token

    def tok_encode(self, string: str, **kwargs) -> list[int]:
        return self.enc.encode_ordinary(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.enc.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation) or None, context ids, continuation ids)."""
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        scored = loglikelihoods(self.model, pairs, self.enc.n_vocab, self._device, self.batch)
        out = []
        for (key, _, _), s in zip(requests, scored):
            out.append((s.loglik, s.greedy))
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, out[-1])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each document's log-likelihood: its tokens after the end-of-text token, in disjoint windows of
        max_length predictions, each window conditioned on what precedes it inside the window."""
        out = []
        for req in requests:
            (text,) = req.args
            windows = get_rolling_token_windows(self.tok_encode(text), self.prefix_token_id, self.max_length, context_len=1)
            scored = self._loglikelihood_tokens([(None, *make_disjoint_window(w)) for w in windows])
            out.append(sum(s[0] for s in scored))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), out[-1])
        return out

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, each cut before the first of its `until` strings or the end-of-text token."""
        out = []
        for req in requests:
            context, kwargs = req.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            budget = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = self.tok_encode(context) or [self.prefix_token_id]
            text = self._greedy(ids, budget, until)
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, kwargs), text)
        return out

    def _greedy(self, ids: list[int], budget: int, until: list[str]) -> str:
        """Up to `budget` greedy tokens after `ids`, decoded, cut at the first stop string."""
        x = torch.tensor([ids], dtype=torch.long, device=self._device)
        new: list[int] = []
        while len(new) < budget:
            step = min(GEN_CHUNK, budget - len(new))
            x = self.model.generate(x, step, temperature=0.0, vocab_limit=self.enc.n_vocab, stop_token=self.eot_token_id)
            new = x[0, len(ids) :].tolist()
            if self.eot_token_id in new:
                new = new[: new.index(self.eot_token_id)]
                break
            if any(s in self.tok_decode(new) for s in until):
                break
        text = self.tok_decode(new[:budget])
        cut = min((text.index(s) for s in until if s in text), default=len(text))
        return text[:cut]


def write_lm_eval_tasks(paths: list[str], out_dir: str) -> list[str]:
    """raylm's task files (core/taskfile.py) as lm-eval tasks: for each, `{out_dir}/raylm-{name}/` holds its
    examples (examples.jsonl) and a task YAML reading them (dataset_path json: no download), scored as raylm scores
    it: the context as the text, the choices (or continuation) joined to it with no delimiter, the file's fewshot
    prefix as lm-eval's description. Returns the task names, for `--tasks` with `--include_path out_dir`."""
    import json
    from pathlib import Path

    import yaml

    from raylm.training.tasks import read_task, task_files

    names = []
    for f in task_files(paths):
        task = read_task(f)
        name = f"raylm-{task.header.name}"
        d = Path(out_dir) / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "examples.jsonl").write_text("".join(json.dumps(e.model_dump(mode="json")) + "\n" for e in task.examples))
        spec = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str((d / "examples.jsonl").resolve())}},
            "test_split": "test",
            "description": task.header.fewshot,
            "doc_to_text": "context",
            "target_delimiter": "",
        }
        if task.header.kind == "multiple_choice":
            metrics = ["acc", "acc_norm", "acc_bytes"]
            spec.update(output_type="multiple_choice", doc_to_choice="choices", doc_to_target="gold")
        else:
            metrics = ["acc"]
            spec.update(output_type="loglikelihood", doc_to_target="continuation")
        spec["metric_list"] = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics]
        (d / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
        names.append(name)
    return names


def _usable(device: str) -> str:
    """`device`, or cpu (said in one line) when it names a GPU this machine lacks: lm-eval's command line passes
    cuda:0 unless told otherwise, and its own hf model does the same."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        print(f"raylm lm-eval: {device} is not available here: the model runs on cpu", file=sys.stderr)
        return "cpu"
    return device


def main(argv: list[str] | None = None) -> None:
    """`raylm lm-eval ...`: lm-eval's command line, with the `raylm` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm-eval", *argv]
    cli_evaluate()
