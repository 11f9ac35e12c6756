#!/usr/bin/env bash
# Import every public prompt-safety set into so8t records, one JSONL per set.
#   scripts/import_public.sh [SHARED_DATA_DIR] [OUT_DIR]
# Defaults: ../shared/data (beside this clone) and imported/. The label mappings are the
# importers' defaults (docs/importers.md); the XSafety and japanese-toxic mappings are
# category- or vote-level guesses, see there before relying on them.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-../shared/data}
OUT=${2:-imported}
SO8T=${SO8T:-.venv/bin/so8t}
if [ ! -d "$SRC" ]; then
  echo "import_public.sh: no folder $SRC; pass the folder holding the public sets as the first" \
       "argument, laid out as docs/importers.md ('Getting the data') lists them" >&2
  exit 2
fi
mkdir -p "$OUT"
run() { "$SO8T" data import "$1" "$SRC/$2" -o "$OUT/$3"; }
run advbench          advbench/harmful_behaviors.csv            advbench.jsonl
run strongreject      strongreject/strongreject_dataset.csv     strongreject.jsonl
run do-not-answer     do-not-answer/do_not_answer_en.csv        do-not-answer.jsonl
run coconot           coconot/coconot_eval.jsonl                coconot.jsonl
run coconot-contrast  coconot/coconot_contrast_eval.jsonl       coconot-contrast.jsonl
run toxic-chat        toxic-chat/toxic_chat_train.json          toxic-chat.jsonl
run medicheck         medical-safety/medicheck-expert.csv       medicheck-expert.jsonl
run medicheck-neg     medical-safety/medicheck-neg.csv          medicheck-neg.jsonl
run japanese-toxic    japanese-toxic/subset.csv                 japanese-toxic.jsonl
run xsafety           xsafety                                   xsafety.jsonl
run beavertails       beavertails-sample/beavertails_sample.csv beavertails.jsonl
