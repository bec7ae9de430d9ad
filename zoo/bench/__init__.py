"""`python -m zoo.bench`: how fast a preset trains, decodes, feeds and compiles, against its peers.

    python -m zoo.bench --model gpt2-small --batch-size 4 --seq-len 256 --steps 5 --dtype float32 \\
        [--set model.remat=dots] [--vs hf-flax] [--vs hf-torch] [--only train,decode] [--json out.json]

Sections (all by default; `--only` picks some):

- train: the real train step, built exactly as train.py builds it (`zoo.experiment.build`, the
  preset's vocabulary kept, shardings, donation and remat policy from the config) and fed
  random-token batches made by the family's own `row_maker` through `zoo.data`. Reported: jit
  lower+compile time, the first step (compile + one step, what the peers call `compile_s`), median
  step time with min-max over `--steps` steps each timed to completion, tokens/s, MFU and peak memory.
- decode: KV-cache greedy generation through the family's `generate` (skipped for families without
  one), at each `--decode-batch`: tokens/s of `--new-tokens` new tokens after a `--prompt-len` prompt,
  and time to first token (a call with one new token). Every timed call follows an identical warm-up.
- input: batches/s of the data pipeline alone (`zoo.data.Split` -> rows -> global arrays)
  and how many times faster that is than the train step consumes batches.
- compile: jit lower+compile time of the train step at `--depths` layers of the same width.

MFU = flops_per_token x tokens/s / (devices x peak FLOP/s), with the family's `flops_per_token`
(GPT: 6 x matmul params + 12 x layers x heads x head_dim x seq_len, i.e. forward + backward of every
weight matmul plus the attention scores and values, causal mask not discounted). The peak is the
data-sheet figure of `zoo.throughput.PEAK_FLOPS` for TPU/GPU kinds and, on CPU, an n x n matmul in the
compute dtype measured at start (n = 2048 on CPU, 8192 on accelerators); both are printed, and on an
accelerator `mfu_vs_measured` divides by the measured matmul rate too.

`--vs hf-flax` / `--vs hf-torch` run the Hugging Face peers (`peers`) on the same shapes in the same
run and print ours / theirs per figure. A peer is the transformers model that the family's own
Hugging Face mapping names (`family.hf.config_to_hf`), randomly initialised, every dropout rate 0.
Its train steps run in a subprocess each (`python -m zoo.bench.peer_child`), so their peak-memory
high-water marks are their own; `--peer-process inline` runs them here instead. A missing peer stack
is reported, not fatal. Peak memory on CPU is the process's resident-set high-water mark raised by
the section (so it includes compiler memory); on GPU/TPU, the allocator's `peak_bytes_in_use`.

Modules: `__main__` (flags, the run), `ours` (zoo's sections), `synthetic` (random-token batches),
`peers` (the Hugging Face peers: configs, batches, losses), `peer_flax` / `peer_torch` (their
backends), `peer_child` (the peer train step in its own process), `compare` (peers beside ours,
never fatal), `measure` (clocks and memory), `report` (ratios and the table).
"""
