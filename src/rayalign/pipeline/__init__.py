"""`rayalign run PIPELINE.yaml [stages.NAME.config.KEY=VALUE ...]`: run a pipeline's stages in order.

    rayalign run rayjobs/configs/quickstart.yaml
    rayalign run rayjobs/configs/quickstart.yaml stages.sft.config.max_steps=5 run_dir=runs/try2
    rayalign run rayjobs/configs/quickstart.yaml --dry-run      # validate every stage config, run nothing
    rayalign run rayjobs/configs/pipeline-tiny.yaml run_dir=s3://bucket/runs/tiny   # object storage

A pipeline YAML:

    run_dir: runs/quickstart              # every stage writes under <run_dir>/<name>/ (local or s3://, gs://)
    defaults: {model: builtin:smollm2-135m-instruct}
    stages:
      - name: chat                         # unique, used in paths, references and overrides
        stage: prepare                     # a name from the stage registry (rayalign.stages)
        config: {kind: chat, inputs: [rayjobs/data/chat.jsonl]}
      - name: sft
        stage: sft
        config: {data: "${stages.chat.output}", max_steps: 20}
      - repeat:                            # rounds: these stages run `times` times, in order
          name: rounds                     # (optional) addresses the group in overrides: stages.rounds.times=3
          times: 2
          stages:
            - name: sample
              stage: sample
              config: {model: "${round.prev.prefer.checkpoint | stages.sft.checkpoint}"}
            - name: prefer
              stage: prefer
              config: {model: "${round.prev.prefer.checkpoint | stages.sft.checkpoint}",
                       data: {path: "${stages.sample.output}"}}

Rules, in the order they apply to each stage's `config`:
1. `defaults`: a key is copied into a stage's config when the stage's config class has that field
   and the stage does not set it (so `model` reaches every stage that takes a model).
2. `output` / `output_dir`: when the config class has such a field and the stage leaves it out, it
   becomes `<run_dir>/<name>` (`<run_dir>/round-<r>/<name>` inside a repeat group).
3. `${...}` references: `${run_dir}`, `${defaults.KEY}`, `${stages.NAME.KEY[.SUB...]}`. A stage
   reference reads the earlier stage's `StageResult` first — `output`, `checkpoint`,
   `counts.in`, `metrics.X`, `details.X` — then its resolved config (e.g. `max_length`).
   `${stages.NAME.config.KEY}` always reads the config. A string that is exactly one reference
   takes the referenced value with its type; a reference inside a longer string is pasted in as
   text. `--dry-run` validates configs before any stage ran: references to results not known yet
   become placeholder strings such as "<stages.sft.checkpoint>".

Rounds (`repeat`): inside the group, `${stages.NAME...}` of a group stage means this round's
instance; `${round.prev.NAME...}` the previous round's, `${round.index}` / `${round.times}` the
round number (from 1) and count. `A | B` is a fallback: the first that exists, so
`${round.prev.prefer.checkpoint | stages.sft.checkpoint}` is the last policy, and sft's in round 1.
After the group, `${stages.NAME...}` means the last round's instance. Each round's stages have
their own folders and records, so a run killed in round 2 resumes in round 2.

A finished stage records `<stage dir>/stage.json` (status, config hash, result); a re-run skips a
stage whose record is complete with an equal hash — of its config and of the earlier stages it
references, so a change upstream re-runs everything downstream of it (a completed stage that must
re-run has its folder cleared first) — and re-runs a half-finished one, which resumes on its own
(dataset stages skip finished shards; training stages restart from their last checkpoint). A
failed stage stops the run, records the error, and prints the command that resumes. At the end
`<run_dir>/summary.json` lists every stage's outputs, counts and metrics, and `final_model`: the
`final_model` key of the pipeline YAML if given, otherwise the `checkpoint` of the last stage that
produced one.

While it runs, a live display shows the stages and the current one's progress (plain lines when
stdout is not a terminal, printed when the counts change or every 30 s; `--progress json`: one JSON
object per event); Ray's, vLLM's and the stages' own output goes to
`<run_dir>/logs/run-<time>.log` (`--verbose` shows it instead). SIGTERM stops the run like Ctrl-C:
the stage is recorded as failed (it resumes on the next run) and a Ray cluster the run started is
shut down.

`rayalign status RUN_DIR` reads the same files back (and `<run_dir>/run.json`, the command that
started the run): every stage's state, counts, the running stage's progress, the last checkpoint,
the last error and the command that resumes.

Overrides address stages by name: `stages.sft.config.max_steps=5`, `defaults.model=...`,
`run_dir=...`. Exit codes: 0 done, 1 a stage failed, 2 a configuration error, 130 interrupted.

Modules: `spec` (YAML, overrides, steps), `refs` (reference resolution), `records` (stage records,
summary), `runner` (order, skip/resume), `progress` + `render` (what a person sees), `status` (`rayalign status`), `main` (CLI).
"""

from rayalign.pipeline.main import main
from rayalign.pipeline.records import read_record, read_summary
from rayalign.pipeline.refs import Entry, Scope, interpolate, resolve
from rayalign.pipeline.runner import EmptyOutput, StageFailed, run_pipeline, validate_pipeline
from rayalign.pipeline.spec import PipelineConfig, StageSpec, Step, apply_pipeline_overrides, load_pipeline, steps

__all__ = [
    "EmptyOutput",
    "Entry",
    "PipelineConfig",
    "Scope",
    "StageFailed",
    "StageSpec",
    "Step",
    "apply_pipeline_overrides",
    "interpolate",
    "load_pipeline",
    "main",
    "read_record",
    "read_summary",
    "resolve",
    "run_pipeline",
    "steps",
    "validate_pipeline",
]
