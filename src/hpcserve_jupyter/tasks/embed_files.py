"""The `embed-files` task: one embedding per input file, with the model at $HPCSERVE_MODEL.

    $HPCSERVE_INPUT/**/NAME      ->  $HPCSERVE_OUTPUT/**/NAME.json
                                     {"file", "chars", "tokens", "embedding": [...]}

Runs llama.cpp in process (llama-cpp-python) with mean pooling, so each file gets ONE vector
whatever its length (text beyond the context is cut). Writes "done total" lines to
$HPCSERVE_PROGRESS, which the job's progress shows. A real task, small enough for a CPU.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    source = Path(os.environ["HPCSERVE_INPUT"])
    dest = Path(os.environ["HPCSERVE_OUTPUT"])
    model = os.environ.get("HPCSERVE_MODEL", "")
    progress = os.environ.get("HPCSERVE_PROGRESS")
    if not model or not Path(model).is_file():
        print(f"embed-files: no model file at HPCSERVE_MODEL={model!r}", file=sys.stderr)
        return 2
    import llama_cpp

    files = sorted(p for p in source.rglob("*") if p.is_file())
    llm = llama_cpp.Llama(model_path=model, embedding=True, n_ctx=512, verbose=False,
                          pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    for n, path in enumerate(files, 1):
        text = path.read_text(encoding="utf-8", errors="replace")
        tokens = llm.tokenize(text.encode(), add_bos=True)[:512]
        vector = llm.embed(llm.detokenize(tokens).decode("utf-8", "replace") or " ")
        rel = path.relative_to(source)
        out = dest / rel.parent / (rel.name + ".json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"file": rel.as_posix(), "chars": len(text),
                                   "tokens": len(tokens), "embedding": vector}))
        print(f"embedded {rel} ({len(tokens)} tokens)", flush=True)
        if progress:
            with open(progress, "a") as fh:
                fh.write(f"{n} {len(files)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
