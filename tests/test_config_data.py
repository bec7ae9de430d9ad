"""Typed configuration overrides, and the data path from sources to sharded batches."""

import dataclasses
import json
import threading

import jax
import numpy as np
import pytest

import models
from models.gpt import data as gpt_data, model as gpt
from zoo import config as config_lib, data, optim, rows as rows_lib, sources, workdir as workdir_lib
from zoo.errors import DataError


def base():
    return config_lib.Config(preset="gpt-tiny", family="gpt", model=gpt.PRESETS["gpt-tiny"])


def test_overrides_are_typed_and_checked():
    cfg = config_lib.apply_overrides(base(), ["optim.learning_rate=3e-4", "model.num_layers=2",
                                              "model.remat=full", "model.use_bias=false"])
    assert cfg.optim.learning_rate == 3e-4 and cfg.model.num_layers == 2
    assert cfg.model.remat == "full" and cfg.model.use_bias is False
    for bad, message in [("optim.nope=1", "unknown config key"), ("model.num_layers=2.5", "expects int"),
                         ("optim=1", "is a section"), ("optim.learning_rate", "key=value"),
                         ("model.use_bias=maybe", "true or false"), ("family=bert", "cannot be overridden")]:
        with pytest.raises(config_lib.ConfigError, match=message):
            config_lib.apply_overrides(base(), [bad])


@pytest.mark.parametrize("bad", ["model.norm=batchnorm", "model.activation=tanh", "model.remat=ful",
                                 "model.dtype=bfloat", "model.attention_impl=flash", "model.position=alibi"])
def test_enum_fields_accept_only_their_choices(bad):
    with pytest.raises(config_lib.ConfigError, match=f"{bad.split('=')[0]} must be one of"):
        config_lib.apply_overrides(base(), [bad])


def test_enum_fields_of_every_family_are_checked_from_python_and_json():
    cfg = models.run_config("bert-tiny")
    with pytest.raises(config_lib.ConfigError, match="model.task must be one of"):
        config_lib.check_fields(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, task="qa")))
    raw = json.loads(config_lib.to_json(models.run_config("t5-tiny")))
    raw["model"]["objective"] = "denoise"
    with pytest.raises(config_lib.ConfigError, match="objective must be one of"):
        config_lib.from_dict(raw, models.FAMILIES["t5"].Config)


def test_resume_may_change_runtime_switches_but_not_shapes(tmp_path):
    workdir = str(tmp_path)
    saved = config_lib.apply_overrides(models.run_config("gpt-tiny"), ["model.num_layers=2"])
    workdir_lib.save_config(saved, workdir)
    resumed = workdir_lib.run_config(workdir, None, ["model.remat=full", "model.dtype=bfloat16",
                                                      "model.dropout=0.1", "model.attention_impl=xla"])
    assert (resumed.model.remat, resumed.model.dtype, resumed.model.num_layers) == ("full", "bfloat16", 2)
    for shape_change in ("model.d_model=64", "model.norm=rmsnorm", "model.vocab_size=100"):
        with pytest.raises(config_lib.ConfigError, match=f"{shape_change.split('=')[0]} cannot change on resume"):
            workdir_lib.run_config(workdir, None, [shape_change])
    with pytest.raises(config_lib.ConfigError, match="holds a gpt-tiny run"):
        workdir_lib.run_config(workdir, "bert-tiny", [])


def test_config_json_round_trip():
    cfg = config_lib.apply_overrides(base(), ["train.steps=7", "mesh.fsdp=2"])
    again = config_lib.from_dict(json.loads(config_lib.to_json(cfg)), gpt.Config)
    assert again == cfg
    raw = json.loads(config_lib.to_json(cfg))
    raw["model"]["bogus"] = 1
    with pytest.raises(config_lib.ConfigError, match="bogus"):
        config_lib.from_dict(raw, gpt.Config)


def test_every_preset_is_valid():
    for name, (family_name, cfg) in models.PRESETS.items():
        family = models.FAMILIES[family_name]
        family.validate(cfg, 128)


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = config_lib.OptimConfig(learning_rate=1.0, warmup_steps=10, min_lr_ratio=0.1)
    schedule = optim.learning_rate_schedule(cfg, 100)
    assert float(schedule(0)) == 0.0 and abs(float(schedule(10)) - 1.0) < 1e-6
    assert abs(float(schedule(100)) - 0.1) < 1e-6
    assert all(float(schedule(i)) >= float(schedule(i + 1)) for i in range(10, 100))


def test_weight_decay_only_on_matrices():
    params = {"layers": {"mlp": {"w_in": np.zeros((2, 4, 8)), "b_in": np.zeros((2, 8))}},
              "final_norm": {"scale": np.zeros(4)}, "token_embed": {"embedding": np.zeros((10, 4))}}
    mask = optim.decay_mask(params)
    assert mask["layers"]["mlp"]["w_in"] and not mask["layers"]["mlp"]["b_in"]
    assert not mask["final_norm"]["scale"] and mask["token_embed"]["embedding"]


def id_split(docs=80, batch_size=8, shuffle=True, local=None, workers=0, seed=3):
    """A GPT split of documents of 2..8 known ids (read by the benchmark's id tokenizer), rows of 9 tokens."""
    from zoo.bench.synthetic import IdTokenizer
    run = dataclasses.replace(base(), data=config_lib.DataConfig(batch_size=batch_size, seq_len=8, workers=workers))
    records = sources.RecordList([{"text": " ".join(map(str, range(3, 3 + (i % 7) + 2)))} for i in range(docs)])
    maker = gpt_data.row_maker(run, IdTokenizer(64))
    return data.Split(records, maker, batch_size, seed, shuffle=shuffle, local=local, workers=workers)


def take(batches, n):
    return [next(batches) for _ in range(n)]


def test_batches_do_not_depend_on_which_process_reads_which_rows():
    whole = take(id_split().batches(), 12)  # 80 documents of ~5 ids: later batches are in later epochs
    halves = [take(id_split(local=slice(i * 4, i * 4 + 4)).batches(), 12) for i in range(2)]
    for k, batch in enumerate(whole):
        for key, value in batch.inputs.items():
            np.testing.assert_array_equal(np.concatenate([h[k].inputs[key] for h in halves]), value)
        np.testing.assert_array_equal(np.concatenate([h[k].cursors for h in halves]), batch.cursors)
    assert not np.array_equal(whole[0].inputs["inputs"], whole[1].inputs["inputs"])


def test_resuming_from_a_data_state_continues_with_the_same_batches():
    split = id_split()
    run = take(split.batches(), 6)
    state = data.DataState(3, data.global_cursors(run[2], 8))
    state = data.DataState.from_json(json.loads(json.dumps(state.to_json())), 8)  # as a checkpoint keeps it
    for a, b in zip(run[3:], take(split.batches(state), 3)):
        for key in a.inputs:
            np.testing.assert_array_equal(a.inputs[key], b.inputs[key])
    with pytest.raises(DataError, match="batch size 8"):
        data.DataState.from_json(state.to_json(), 16)


def test_worker_processes_make_the_same_batches():
    alone = take(id_split().batches(), 3)
    batches = id_split(workers=2).batches()
    try:
        with_workers = take(batches, 3)
    finally:
        batches.close()
    for a, b in zip(alone, with_workers):
        for key in a.inputs:
            np.testing.assert_array_equal(a.inputs[key], b.inputs[key])


def test_packing_keeps_documents_whole_and_in_order_within_a_slot():
    from zoo.bench.synthetic import IdTokenizer
    run = dataclasses.replace(base(), data=config_lib.DataConfig(batch_size=1, seq_len=8))
    records = [{"text": "3 4 5"}, {"text": ""}, {"text": "6 7 8 9 10 11 12"}]
    rows = rows_lib.rows_of(records, gpt_data.row_maker(run, IdTokenizer(64)))
    assert [r["tokens"].tolist() for r in rows] == [[3, 4, 5, 1, 6, 7, 8, 9, 10], [11, 12, 1, 0, 0, 0, 0, 0, 0]]
    assert [r["segments"].tolist() for r in rows] == [[1, 1, 1, 1, 2, 2, 2, 2, 2], [1, 1, 1, 0, 0, 0, 0, 0, 0]]


def test_prefetch_yields_the_batches_in_order_and_closing_joins_its_thread():
    split = id_split()
    expected = take(split.batches(), 3)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    stream = data.prefetch(split.batches(), {k: sharding for k in expected[0].inputs})
    for want in expected:
        placed, host = next(stream)
        np.testing.assert_array_equal(np.asarray(placed["inputs"]), want.inputs["inputs"])
        np.testing.assert_array_equal(host.cursors, want.cursors)
    assert any(t.name == "zoo-prefetch" for t in threading.enumerate())
    stream.close()
    # a daemon thread caught inside a device transfer at interpreter exit aborts the process
    assert not any(t.name == "zoo-prefetch" for t in threading.enumerate())


def test_an_evaluation_pass_reads_every_document_once_then_pads_with_zero_weight():
    split = id_split(docs=13, shuffle=False)
    batches = split.batches()
    seen = []
    while (batch := next(batches)).real.any():
        seen.append(batch)
    # a row's tokens are its first input and its targets; padding is id 0, which no document holds
    rows = np.concatenate([np.concatenate([b.inputs["inputs"][:, :1], b.inputs["targets"]], axis=1)[b.real]
                           for b in seen])
    docs = [list(range(3, 3 + (i % 7) + 2)) + [1] for i in range(13)]
    assert sorted(rows[rows > 0].tolist()) == sorted(t for d in docs for t in d)
    assert all(float(b.inputs["weights"][~b.real].sum()) == 0 for b in seen)  # padding rows weigh nothing
    assert not batch.real.any() and batch.inputs["weights"].sum() == 0


def test_text_sources(tmp_path):
    (tmp_path / "a.txt").write_text("first document\nwith two lines\n\n\nsecond one\r\n")
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n\n{"input": "q", "target": "a"}\n{"text": "y", "label": 1}')
    spec = f"text:{tmp_path}/*"
    records = [r for split in ("train", "validation") for r in sources.iterate(sources.open_source(spec, split, 0.4))]
    assert sorted(map(json.dumps, records)) == sorted(map(json.dumps, [
        {"text": "first document\nwith two lines"}, {"text": "second one"}, {"text": "x"},
        {"input": "q", "target": "a"}, {"text": "y", "label": "1"}]))
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(DataError, match="bad.jsonl at byte 0"):
        sources.open_source(f"text:{tmp_path}/bad.jsonl", "train")


def test_text_index_finds_the_same_documents_whatever_the_read_chunk(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    paragraphs = [" ".join("w%d" % i for i in rng.integers(0, 99, rng.integers(1, 30))) for _ in range(200)]
    text = "".join(p.replace(" w1 ", "\nw1 ") + "\n" * int(rng.integers(2, 4)) for p in paragraphs)
    (tmp_path / "doc.txt").write_text(text)
    expected = [p.replace(" w1 ", "\nw1 ") for p in paragraphs]
    for chunk in (7, 64, 1 << 24):
        monkeypatch.setattr(sources, "_CHUNK", chunk)
        assert [r["text"] for r in sources.iterate(sources.TextFiles([str(tmp_path / "doc.txt")]))] == expected


def test_tfds_source_reads_a_locally_built_dataset(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    docs = [f"document number {i} about python" for i in range(30)]

    class ZooLocalText(tfds.core.GeneratorBasedBuilder):
        """Local text documents, built offline (the TFDS path users take with their own data)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(docs[:25]), "validation": self._generate_examples(docs[25:])}

        def _generate_examples(self, items):
            for i, text in enumerate(items):
                yield i, {"text": text}

    ZooLocalText(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    train = sources.open_source("tfds:zoo_local_text", "train")
    assert sorted(r["text"] for r in sources.iterate(train)) == sorted(docs[:25])
    assert len(sources.open_source("tfds:zoo_local_text", "validation")) == 5


def test_memory_grows_with_the_number_of_records_only_never_with_the_text(tmp_path, monkeypatch):
    """A pipeline over a source 10x larger holds no more text: only its index grows, a few bytes a record."""
    import tracemalloc

    from zoo.bench.synthetic import IdTokenizer
    monkeypatch.setattr(sources, "_CHUNK", 1 << 16)  # the indexer's read buffer, shrunk to the test's scale
    rng = np.random.default_rng(0)
    line = lambda: json.dumps({"text": " ".join(map(str, rng.integers(3, 60, 300)))}) + "\n"  # noqa: E731
    run = dataclasses.replace(base(), data=config_lib.DataConfig(batch_size=8, seq_len=64))
    maker = gpt_data.row_maker(run, IdTokenizer(64))

    def peak(records):
        path = tmp_path / f"{records}.jsonl"
        path.write_text("".join(line() for _ in range(records)))
        tracemalloc.start()
        batches = data.Split(sources.open_source(f"text:{path}", "train"), maker, 8, 0, shuffle=True).batches()
        take(batches, 20)
        used = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return used, path.stat().st_size

    (small, small_bytes), (large, large_bytes) = peak(2_000), peak(20_000)
    assert large_bytes > 9 * small_bytes
    assert large - small < 64 * 18_000  # the index: byte offsets and the split's record ids
    assert large < large_bytes / 10  # the text itself is never held
