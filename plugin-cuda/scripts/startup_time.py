"""Start-up time, process start to first token: `T0=$(date +%s.%N) python3 startup_time.py ENGINE_ARGS...`
(the same flags as `octavo bench throughput`). Prints the seconds from T0 (taken by the shell
before the interpreter started) to the first generated token."""

import os
import sys
import time

t_import = time.time()
import argparse  # noqa: E402
import logging  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
from octavo import EngineArgs, SamplingParams  # noqa: E402
from octavo.entrypoints.llm import LLM  # noqa: E402

p = EngineArgs.add_cli_args(argparse.ArgumentParser())
args = EngineArgs.from_cli_args(p.parse_args(sys.argv[1:]))
t0 = float(os.environ.get("T0", t_import))
t_engine = time.time()
llm = LLM(**vars(args))
t_ready = time.time()
llm.generate([{"prompt_token_ids": [100, 200, 300]}], SamplingParams(max_tokens=1, ignore_eos=True), use_tqdm=False)
t_first = time.time()
print(
    f"STARTUP: {t_first - t0:.1f} s process start -> first token "
    f"(interpreter+imports {t_engine - t0:.1f} s, engine {t_ready - t_engine:.1f} s, first token {t_first - t_ready:.2f} s)"
)
