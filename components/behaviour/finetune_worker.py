"""One process of a multi-GPU LoRA fine-tune, started by `accelerate launch` (see finetune.launch_multi_gpu):
python -m components.behaviour.finetune_worker PARAMS_FILE PAIRS_JSON OUT_DIR LOG_JSON."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path


def main(argv: list[str]) -> None:
    from accelerate import PartialState

    from components.behaviour.assistant import Generator
    from components.behaviour.finetune import save_adapter, train_lora
    from components.config import load_params

    params_file, pairs_file, out_dir, log_file = argv
    params = load_params(params_file)
    state = PartialState()
    generator = Generator(params, device=str(state.device))
    pairs = [tuple(p) for p in json.loads(Path(pairs_file).read_text())]
    peft_model, log = train_lora(generator.model, generator.tokenizer, pairs, params.finetune)
    if state.is_main_process:
        save_adapter(peft_model, Path(out_dir), params.generator.model)
        Path(log_file).write_text(json.dumps(asdict(log)))
    state.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1:])
