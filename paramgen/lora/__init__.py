"""Text-conditioned LoRA generation (Cond P-Diff) with PEFT adapters in and out.

The pieces, one module each, in the order a user meets them:

- `paramgen.lora.setup`: `LoRASetup`, what an adapter is (MiniLM, LoRA rank and
  placement, the head padded to ``max_labels`` rows by `pad_head` so that 2- and 3-label
  tasks share one vector).
- `paramgen.lora.tasks`: `text_tasks` / `TextTask`, classification tasks built from the
  tweet corpus, each with a natural-language description (`TextTask.condition`).
- `paramgen.lora.tasks_many`: `many_tweet_tasks`, all 18 tweet tasks in every label order
  with each label's number in the description; `label_twins`, `label_slot_condition`.
- `paramgen.lora.baselines`: `nearest_tasks`, `train_multitask_lora`, `fit_composition`
  (what an adapter generated for an unseen task has to beat).
- `paramgen.lora.minilm`: `MiniLMLoRA`, the base model plus paramgen's own forward of the
  LoRA layers on cached `Features`, and `MiniLMLoRA.train_lora`.
- `paramgen.lora.finetune`: `MiniLMClassifier`, MiniLM fully fine-tuned (six blocks and a
  head, functional in a state dict), `frozen_logreg` (the frozen base plus logistic
  regression) and `build_finetune_zoo` (tasks x seeds of fine-tunes over a pinned base).
- `paramgen.lora.adapters`: `save_adapter` / `load_adapter`, standard PEFT adapter
  folders of a `LoRASetup` out and in (the files are read and written, whole, by
  `paramgen.formats.peft`), with clear errors (`AdapterError`) for a folder that does not
  fit; `load_peft_model` loads one with plain PEFT on its base model (`resolve_base_model`
  finds the packaged MiniLM from the name the folder records).
- `paramgen.lora.export`: `AdapterExport`, what a generator fitted on a zoo of imported
  PEFT adapters needs to write its samples as adapters (each task's labels, ``lora_alpha``,
  the base model).
- `paramgen.lora.zoo`: `LoRAZoo`, checkpoints as stacked tensors plus a JSON manifest.
- `TextOrVectorConditioner` (a text condition or a condition vector, how two task
  conditions are interpolated) lives in `paramgen.conditioners`; it is re-exported here.
- `paramgen.lora.generate`: `generate_adapters` (adapters for a task given in words, from
  a generator built by `paramgen.pipelines.cond_pdiff`).

Every name is importable from ``paramgen.lora``. MiniLM, PEFT export and text conditions
need the extra ``pip install 'paramgen[lora]'``; the layout, loading adapter folders and
the zoo do not.

Examples:
    >>> setup = LoRASetup(rank=4, layers=(5,))
    >>> setup.spec().numel  # 1 layer x (q, v) x (A + B) + a 3-row head
    7299
"""

from paramgen.conditioners.text_or_vector import TextOrVectorConditioner
from paramgen.lora.adapters import load_adapter, load_peft_model, resolve_base_model, save_adapter
from paramgen.lora.baselines import fit_composition, nearest_tasks, train_multitask_lora
from paramgen.lora.export import AdapterExport
from paramgen.lora.finetune import FINETUNE_PRESETS, FINETUNE_TASKS, LogRegBaseline, MiniLMClassifier, build_finetune_zoo, frozen_logreg
from paramgen.lora.generate import check_description, generate_adapters
from paramgen.lora.minilm import Features, MiniLMLoRA
from paramgen.lora.setup import BASE_MODEL_ID, AdapterError, LoRASetup, find_head, pad_head, pad_rows, unpad_head
from paramgen.lora.setup import _minilm_path as _minilm_path  # not public: the local MiniLM folder (tests, harnesses)
from paramgen.lora.tasks import TASK_DESCRIPTIONS, TextTask, text_tasks
from paramgen.lora.tasks_many import SENTIMENTS, TWEET_TASKS, TaskSpec, label_slot_condition, label_twins, many_tweet_tasks
from paramgen.lora.zoo import LoRAZoo

__all__ = [
    "BASE_MODEL_ID",
    "AdapterError",
    "LoRASetup",
    "TextTask",
    "text_tasks",
    "TASK_DESCRIPTIONS",
    "MiniLMLoRA",
    "Features",
    "save_adapter",
    "load_adapter",
    "load_peft_model",
    "resolve_base_model",
    "AdapterExport",
    "LoRAZoo",
    "TextOrVectorConditioner",
    "pad_head",
    "pad_rows",
    "find_head",
    "unpad_head",
    "check_description",
    "generate_adapters",
    "MiniLMClassifier",
    "LogRegBaseline",
    "frozen_logreg",
    "build_finetune_zoo",
    "FINETUNE_TASKS",
    "FINETUNE_PRESETS",
    "SENTIMENTS",
    "TWEET_TASKS",
    "TaskSpec",
    "many_tweet_tasks",
    "label_twins",
    "label_slot_condition",
    "nearest_tasks",
    "train_multitask_lora",
    "fit_composition",
]
