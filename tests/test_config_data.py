"""Typed configuration overrides, and the data path from sources to sharded batches."""

import dataclasses
import json
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
from models.gpt import data as gpt_data, model as gpt
from zoo import config as config_lib, data, optim, workdir as workdir_lib


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


@pytest.mark.parametrize("freeze_layers", [0, 1])
def test_one_pass_adamw_equals_optax_clip_then_adamw(freeze_layers):
    rng = np.random.default_rng(0)
    params = {"layers": {"mlp": {"w_in": rng.normal(size=(3, 4, 8)), "b_in": rng.normal(size=(3, 8))}},
              "final_norm": {"scale": rng.normal(size=4)}, "token_embed": {"embedding": rng.normal(size=(10, 4))}}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    cfg = config_lib.OptimConfig(learning_rate=0.1, warmup_steps=2, clip_norm=1.0, freeze_layers=freeze_layers)
    ours = optim.make_optimizer(cfg, 6, params)
    # the reference: optax's own transforms, with frozen entries masked before clipping and after AdamW
    keep = optim.trainable_mask(params, freeze_layers)
    masked = lambda tree: jax.tree.map(lambda x, m: x * m, tree, keep)
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        optim.learning_rate_schedule(cfg, 6), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
        weight_decay=cfg.weight_decay, mask=optim.decay_mask(params)))
    p_ours, p_ref, s_ours, s_ref = params, params, ours.init(params), reference.init(params)
    for step, size in enumerate([3.0, 0.01, 5.0, 0.1, 2.0, 0.05]):  # norms above and below clip_norm
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * size, jnp.float32), params)
        u_ours, s_ours = jax.jit(ours.update)(grads, s_ours, p_ours)
        u_ref, s_ref = reference.update(masked(grads), s_ref, p_ref)
        p_ours, p_ref = optax.apply_updates(p_ours, u_ours), optax.apply_updates(p_ref, masked(u_ref))
        for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref)):
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-7, err_msg=f"step {step}")
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(params))]
    assert all(moved) if not freeze_layers else any(moved)
    if freeze_layers:  # frozen entries did not move at all
        np.testing.assert_array_equal(p_ours["token_embed"]["embedding"], params["token_embed"]["embedding"])
        np.testing.assert_array_equal(p_ours["layers"]["mlp"]["w_in"][0], params["layers"]["mlp"]["w_in"][0])
        assert not np.array_equal(p_ours["layers"]["mlp"]["w_in"][1], params["layers"]["mlp"]["w_in"][1])


def rows_table(n=40, width=9):
    return gpt_data.pack_documents([list(range(3, 3 + (i % 7) + 2)) for i in range(n * 2)], width - 1, eos_id=1)


def test_batches_are_a_pure_function_of_the_index_and_split_across_processes():
    table = rows_table()
    whole = data.Batches(table, 8, gpt_data.prepare_batch, seed=3)
    halves = [data.Batches(table, 8, gpt_data.prepare_batch, seed=3, local_rows=slice(i * 4, i * 4 + 4))
              for i in range(2)]
    for index in (0, 1, 7, 50):  # 50 lies in a later epoch
        batch = whole.get(index)
        np.testing.assert_array_equal(batch["inputs"], whole.get(index)["inputs"])
        joined = np.concatenate([h.get(index)["inputs"] for h in halves])
        np.testing.assert_array_equal(joined, batch["inputs"])
    epoch = np.concatenate([whole.row_indices(i) for i in range(whole.batches_per_epoch)])
    assert len(set(epoch.tolist())) == len(epoch)  # each row at most once per epoch


def test_prefetch_yields_the_batches_in_order_and_closing_joins_its_thread():
    batches = data.Batches(rows_table(), 8, gpt_data.prepare_batch, seed=3)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    stream = data.prefetch(batches, 5, {k: sharding for k in batches.get(0)})
    for index in (5, 6, 7):
        np.testing.assert_array_equal(np.asarray(next(stream)["inputs"]), batches.get(index)["inputs"])
    assert any(t.name == "zoo-prefetch" for t in threading.enumerate())
    stream.close()
    # a daemon thread caught inside a device transfer at interpreter exit aborts the process
    assert not any(t.name == "zoo-prefetch" for t in threading.enumerate())


def test_final_partial_eval_batch_is_padded_with_zero_weight():
    table = rows_table(n=5)
    rows = len(table["tokens"])
    batches = data.Batches(table, 8, gpt_data.prepare_batch, shuffle=False)
    last = batches.get(batches.batches_per_epoch - 1)
    real = rows - 8 * (batches.batches_per_epoch - 1)
    assert last["weights"][real:].sum() == 0 and last["weights"][:real].sum() > 0


def test_text_sources(tmp_path):
    (tmp_path / "a.txt").write_text("first document\nwith two lines")
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n\n{"input": "q", "target": "a"}\n')
    records = data.load_records(f"text:{tmp_path}/*", "train", valid_fraction=0.5) + data.load_records(
        f"text:{tmp_path}/*", "validation", valid_fraction=0.5)
    assert sorted(map(json.dumps, records)) == sorted(map(json.dumps, [
        {"text": "first document\nwith two lines"}, {"text": "x"}, {"input": "q", "target": "a"}]))
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(data.DataError, match="bad.jsonl:1"):
        data.load_records(f"text:{tmp_path}/bad.jsonl", "train")


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
    train = data.load_records("tfds:zoo_local_text", "train")
    assert sorted(r["text"] for r in train) == sorted(docs[:25])
    assert len(data.load_records("tfds:zoo_local_text", "validation")) == 5
    with pytest.raises(data.DataError, match="cannot open TFDS dataset"):
        data.load_records("tfds:zoo_no_such_dataset", "train")
