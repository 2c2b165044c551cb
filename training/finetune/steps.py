"""What finetuning does the same way for every task: train the model rebuilt from the package (its BatchNorms
given the statistics of the analyst's crops first; resumable; the held-out curve on the way), and record where
the new package comes from and how it compares."""
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple, Union

import torch

from training.finetune.from_package import normalize_folded_convs, recalibrate_batchnorm


def set_run(cfg: Any, spec: Dict, default_lr: float, default_batch: int) -> None:
    """The finetuning run's settings from the spec, the same for every task: iterations, batch, rate (the
    spec's, else the task's default), threads, a short warm-up, a loss line at least every 10 iterations, a
    checkpoint every tenth of the run (at least 5 apart: the backend resumes from the last one when the training
    process dies), the package's name and description."""
    iters = int(spec["iterations"])
    cfg.train.iters = iters
    cfg.train.batch_size = int(spec.get("batch_size") or default_batch)
    cfg.train.lr = float(spec.get("lr") or default_lr)
    cfg.train.num_threads = int(spec.get("num_threads") or 0)  # 0: torch's default (every core)
    cfg.train.warmup_iters = min(20, max(1, iters // 10))
    cfg.train.log_interval = max(1, min(10, iters // 100))
    cfg.train.checkpoint_interval = max(5, iters // 10)
    cfg.export.name = spec.get("name") or Path(spec["out"]).stem
    cfg.export.description = spec.get("description") or ""


def train_rebuilt(train: Callable[..., Dict], cfg: Any, model: torch.nn.Module,
                  model_input: Callable[[int], Union[torch.Tensor, Tuple[torch.Tensor, ...]]],
                  unfolded: Dict[str, str], work_dir: Path, budget: Any,
                  curve: Callable[[torch.nn.Module, int], None], normalize_convs: bool = False) -> Dict:
    """The task's training loop on `model`; resumes when work_dir holds a checkpoint (the backend kept it after a
    crash). `model_input(index)`: the model's input of the training batch `index` (the BatchNorms are recalibrated
    on 4 batches the run never draws). `budget` (training.finetune.run.TimeBudget) may stop it early, as Ctrl-C
    does. `normalize_convs`: see normalize_folded_convs."""
    recalibrate_batchnorm(model, [model_input(10 ** 6 + i) for i in range(4)], unfolded)
    if normalize_convs:
        normalize_folded_convs(model, unfolded)
    with budget:
        state = train(cfg, work_dir, build_model=lambda cfg, load_encoder_weights: model, evaluate_at_end=False,
                      show_progress=False, resume=(work_dir / "latest.pt").is_file(), on_checkpoint=curve)
    model.cpu()  # trained on the GPU when there is one; held-out scoring and export run on the CPU
    return state


def provenance(base_path: Path, base_name: str, parity: Dict, spec: Dict, state: Dict, planned: int, budget: Any,
               metric: str, scores: Tuple[float, float, float], baseline: str, **task_figures: Any) -> Dict:
    """The package's `finetune` metadata: base model, split, iterations, the task's own figures, and the
    task-independent metric, finetuned / base / baseline scores (docs/contract.md §3 "Finetuning")."""
    done = int(state["iteration"])
    return {"base_model": base_path.stem, "base_model_name": base_name, "base_parity": parity,
            "split": spec.get("split", ""), "metric": metric, "iterations_done": done, "iterations_planned": planned,
            "stopped_by_time_budget": bool(done < planned and budget.fired), **task_figures,
            "finetuned_score": scores[0], "base_score": scores[1], "baseline_score": scores[2], "baseline": baseline}


def finetuned_metadata(meta: Dict, description: str, figures: Dict, encoder: str) -> Dict:
    """A task's package metadata made the finetuned package's: the comparison in its description, the
    provenance under `finetune`, the encoder it started from."""
    meta["description"] = (
        f"{description} Finetuned from {figures['base_model']} on the analyst's labels: held-out {figures['metric']} "
        f"{figures['finetuned_score']:.3f} (base model {figures['base_score']:.3f}, {figures['baseline']} "
        f"{figures['baseline_score']:.3f}).").strip()
    meta["finetune"] = figures
    meta["encoder"] = encoder
    return meta


def score_rows(figures: Dict) -> List[Tuple[str, float]]:
    """The report's comparison: (what, held-out score) of the finetuned model, the base model, the baseline."""
    return [("finetuned model", figures["finetuned_score"]), (f"base model {figures['base_model']}", figures["base_score"]),
            (figures["baseline"], figures["baseline_score"])]
