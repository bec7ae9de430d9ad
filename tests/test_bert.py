"""BERT against independent references: Hugging Face PyTorch models and tokenizers, published sizes,
and invariants of masking, pair building, freezing and the end-to-end scripts."""

import dataclasses
import inspect
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FakeTokenizer, perturbed, random_params
from models.bert import FAMILY as BERT, data as bert_tasks, hf as bert_hf, model as bert
from zoo import metrics, rows as rows_lib, steps
from zoo.hf_tokenizer import HFTokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _hf_config(kind: str, **kw):
    shape = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, **kw)
    if kind == "roberta":  # RoBERTa-style: one token type, positions from padding_idx + 1 = 2
        return transformers.RobertaConfig(max_position_embeddings=24, type_vocab_size=1, pad_token_id=1, **shape)
    return transformers.BertConfig(max_position_embeddings=24, type_vocab_size=2, **shape)


def _inputs(kind: str):
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 99, (3, 16))
    mask = np.ones_like(ids)
    mask[1, 11:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 1 if kind == "roberta" else 0  # padding ids, which RoBERTa's position rule reads
    types = np.zeros_like(ids)
    if kind == "bert":
        types[:, 7:] = 1
        types[mask == 0] = 0
    return ids, mask, types


def _torch_out(model, ids, mask, types):
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))


def _ours(cfg, params, ids, mask, types):
    apply = jax.jit(lambda p, *a: bert.Model(cfg).apply({"params": p}, *a))
    return {k: np.asarray(v) for k, v in apply(params, ids, mask, None, types).items()}


def _state_dict(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


HF_MODELS = {  # (our kind, HF class, name of its main logits, our key)
    "bert-pretraining": ("bert", "BertForPreTraining", "prediction_logits", "mlm_logits"),
    "roberta-mlm": ("roberta", "RobertaForMaskedLM", "logits", "mlm_logits"),
    "bert-classify": ("bert", "BertForSequenceClassification", "logits", "logits"),
    "roberta-classify": ("roberta", "RobertaForSequenceClassification", "logits", "logits"),
    "bert-tag": ("bert", "BertForTokenClassification", "logits", "logits"),
}


@pytest.mark.parametrize("name", list(HF_MODELS))
def test_hf_parity_and_save_hf_round_trip(name, tmp_path):
    import zoo

    kind, cls_name, hf_key, our_key = HF_MODELS[name]
    hf_cls = getattr(transformers, cls_name)
    hf = perturbed(hf_cls(_hf_config(kind, num_labels=3)), scale=0.1)
    hf.save_pretrained(tmp_path / "hf")
    m = zoo.load_hf(str(tmp_path / "hf"))  # config.json + model.safetensors -> config_from_hf, params_from_hf
    assert m.num_params == sum(p.numel() for p in hf.parameters())
    ids, mask, types = _inputs(kind)
    ref = _torch_out(hf, ids, mask, types)
    ref_logits = getattr(ref, hf_key).numpy()
    ours = m.logits(ids, mask, types)
    diff = np.abs(ours - ref_logits)
    assert (diff[mask.astype(bool)] if ours.ndim == 3 else diff).max() <= 1e-4  # padded query rows are not compared
    if name == "bert-pretraining":
        nsp = _ours(m.config.model, m.params, ids, mask, types)["nsp_logits"]
        assert np.abs(nsp - ref.seq_relationship_logits.numpy()).max() <= 1e-4

    # back to HF: the exact tensors, then a directory that transformers loads with nothing missing
    original = _state_dict(hf)
    for key, value in bert_hf.params_to_hf(jax.device_get(m.params), m.config.model).items():
        np.testing.assert_array_equal(value, original[key])
    m.save_hf(str(tmp_path / "back"))
    reloaded, info = hf_cls.from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    again = getattr(_torch_out(reloaded.eval(), ids, mask, types), hf_key).numpy()
    assert np.abs(again - ref_logits).max() <= 1e-5


def test_hf_names_without_prefix_and_tf_era_layernorm_names():
    hf = perturbed(transformers.BertForSequenceClassification(
        _hf_config("bert", architectures=["BertForSequenceClassification"])), scale=0.1)
    cfg = bert_hf.config_from_hf(hf.config.to_dict())
    assert (cfg.task, cfg.num_labels) == ("classify", 2)
    tensors = _state_dict(hf)
    renamed = {k.removeprefix("bert.").replace("LayerNorm.weight", "LayerNorm.gamma")
               .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in tensors.items()}
    a, b = bert_hf.params_from_hf(tensors, cfg), bert_hf.params_from_hf(renamed, cfg)
    assert jax.tree.all(jax.tree.map(np.array_equal, a, b))
    with pytest.raises(ValueError, match="lacks.*model.nsp=false"):  # a classifier checkpoint has no NSP/MLM head
        bert_hf.params_from_hf(renamed, dataclasses.replace(cfg, task="pretrain", nsp=True))


@pytest.mark.parametrize("name", sorted(bert.PRESETS))
def test_preset_parameter_counts_match_hugging_face(name):
    cfg = bert.PRESETS[name]
    hf_cfg = bert_hf.config_to_hf(cfg)
    cls = transformers.RobertaForMaskedLM if hf_cfg["model_type"] == "roberta" else transformers.BertForPreTraining
    config_cls = transformers.RobertaConfig if hf_cfg["model_type"] == "roberta" else transformers.BertConfig
    with torch.device("meta"):
        hf = cls(config_cls(**hf_cfg))
    ours = steps.num_params(BERT, cfg)
    assert ours == sum(p.numel() for p in hf.parameters())
    published = {"bert-base": 110_106_428, "bert-large": 336_226_108}  # BertForPreTraining of bert-*-uncased
    assert ours == published.get(name, ours)


def test_encoder_param_paths_are_the_same_for_every_task():
    """--init-from copies params by path and shape, so the encoder must not move between tasks."""
    def shapes(cfg):
        tree = nn.meta.unbox(jax.eval_shape(lambda: bert.init_params(
            bert.Model(cfg), jax.random.key(0), jax.tree.map(jnp.asarray, bert.init_batch(1, 8)))))
        return {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}

    base = bert.PRESETS["bert-tiny"]
    pretrain, classify = shapes(base), shapes(dataclasses.replace(base, task="classify", num_labels=3))
    tag = shapes(dataclasses.replace(base, task="tag"))
    encoder = {k for k in pretrain if not k.startswith(("['mlm']", "['nsp']", "['pooler']"))}
    assert encoder and all(classify[k] == tag[k] == pretrain[k] for k in encoder)
    assert {k for k in pretrain if "pooler" in k} <= set(classify)  # the pooler carries over too
    assert {k for k in classify if k not in pretrain} == {"['classifier']['b']", "['classifier']['w']"}


# ---- tokenizers --------------------------------------------------------------------------------

TEXTS = ["Hello, World! unaffable runs.", "naïve café — [MASK] tokens", "", "  spaced\tout\nlines  ",
         "日本語 text and UNKNOWNWORD", "running ##ing"]


def test_hf_tokenizer_matches_bert_tokenizer_fast(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", ",", "world", "!", "un", "##aff", "##able",
             "run", "##s", ".", "naive", "cafe", "—", "token", "日", "本", "語", "text", "and", "spaced", "out",
             "lines", "##ning", "#", "##ing", "ing"]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    ref = transformers.BertTokenizerFast(vocab_file=str(path), do_lower_case=True)
    ours = HFTokenizer.from_vocab(path)
    for text in TEXTS:
        assert ours.encode(text) == ref(text, add_special_tokens=False)["input_ids"]
    assert ours.encode_batch(TEXTS) == [ref(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    ids = ref(TEXTS[0])["input_ids"]
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    sp = bert_tasks.special_ids(ours)
    assert (sp.cls, sp.sep, sp.mask, sp.pad) == (ref.cls_token_id, ref.sep_token_id, ref.mask_token_id,
                                                 ref.pad_token_id)
    assert ours.vocab_size == len(ref)
    ref.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))  # and the same via tokenizer.json
    assert HFTokenizer.from_file(tmp_path / "tokenizer.json").encode_batch(TEXTS) == ours.encode_batch(TEXTS)


def _run(task="pretrain", seq_len=32, **model):
    from zoo import config

    cfg = dataclasses.replace(bert.PRESETS["bert-tiny"], task=task, **model)
    return config.Config(preset="bert-tiny", family="bert", model=cfg,
                         data=config.DataConfig(seq_len=seq_len, batch_size=8))


def test_masking_rule_and_determinism():
    tok, L = FakeTokenizer(), 64
    sp = bert_tasks.special_ids(tok)
    rng = np.random.default_rng(0)
    B = 400
    lengths = rng.integers(10, L - 1, B)
    tokens = np.where(np.arange(L)[None] < lengths[:, None], rng.integers(3, 61, (B, L)), 0).astype(np.int32)
    tokens[:, 0] = sp.cls
    tokens[np.arange(B), lengths] = sp.sep
    rows = {"tokens": tokens, "token_types": np.zeros_like(tokens), "row": np.arange(B), "labels": np.zeros(B, int)}
    prepare = bert_tasks.prepare_batch_fn(_run(seq_len=L, dynamic_masking=True, nsp=False), tok)
    gens = lambda seed: [np.random.default_rng([seed, r]) for r in range(B)]  # noqa: E731  (one per row)
    batch = prepare(rows, gens(7))
    w = batch["weights"].astype(bool)
    n_candidates = lengths - 1
    np.testing.assert_array_equal(w.sum(1), np.clip(np.rint(0.15 * n_candidates), 1, None))
    picked = np.take_along_axis(tokens, batch["target_positions"], 1)
    np.testing.assert_array_equal(picked[w], batch["targets"][w])
    assert not np.isin(batch["targets"][w], [sp.cls, sp.sep, sp.pad, sp.mask]).any()  # never special tokens
    now = np.take_along_axis(batch["inputs"], batch["target_positions"], 1)[w]
    masked, kept = (now == sp.mask).mean(), (now == batch["targets"][w]).mean()
    assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.03 and abs(1 - masked - kept - 0.1) < 0.03
    untouched = np.ones_like(tokens, bool)
    np.put_along_axis(untouched, batch["target_positions"], ~w, 1)
    np.testing.assert_array_equal(batch["inputs"][untouched], tokens[untouched])
    np.testing.assert_array_equal(batch["segments"], (tokens != 0).astype(np.int32))
    assert not batch["label_weights"].any()  # no NSP
    # dynamic: the row's generator decides; static (BERT): the row id decides, whatever the generators
    again = prepare(rows, gens(7))
    assert all(np.array_equal(batch[k], again[k]) for k in batch)
    assert not np.array_equal(prepare(rows, gens(8))["inputs"], batch["inputs"])
    static = bert_tasks.prepare_batch_fn(_run(seq_len=L, dynamic_masking=False), tok)
    a = static(rows, gens(1))
    b = static({k: v[::-1] for k, v in rows.items()}, gens(2))
    np.testing.assert_array_equal(a["inputs"], b["inputs"][::-1])


def test_nsp_pairs_are_real_consecutive_text_half_the_time():
    rng = np.random.default_rng(0)
    docs = [[list(range(100 * d + 10 * s, 100 * d + 10 * s + int(rng.integers(2, 9)))) for s in range(8)]
            for d in range(60)]
    rng = np.random.default_rng(1)
    pairs = [p for d, doc in enumerate(docs)
             for p in bert_tasks.nsp_pairs(doc, lambda: docs[(d + int(rng.integers(1, len(docs)))) % len(docs)], 29, rng)]
    labels = np.array([label for _, _, label in pairs])
    assert 0.4 < labels.mean() < 0.65  # "random next" is a bit over half: 1-sentence chunks always are
    for a, b, label in pairs:
        assert 0 < len(a) + len(b) <= 29
        same_doc = a[0] // 100 == b[0] // 100
        if label == 0:  # B continues A: the next tokens of the same document
            assert same_doc and b[0] > a[-1]
        else:
            assert not same_doc
    tok = FakeTokenizer()
    records = [{"text": "Alpha beta gamma. Delta epsilon! Zeta eta theta?\n\nIota kappa."} for _ in range(3)]
    rows = rows_lib.stack(rows_lib.rows_of(records, bert_tasks.row_maker(_run(seq_len=16), tok)))
    sp = bert_tasks.special_ids(tok)
    for tokens, types in zip(rows["tokens"], rows["token_types"]):
        seps = np.flatnonzero(tokens == sp.sep)
        assert tokens[0] == sp.cls and len(seps) == 2
        assert (types[:seps[0] + 1] == 0).all() and (types[seps[0] + 1:seps[1] + 1] == 1).all()
        assert (tokens[seps[1] + 1:] == sp.pad).all()


def test_default_fine_tuning_tasks():
    runs = bert_tasks.literal_runs("Call ``os.path.join()`` or :func:`~shlex.quote`, see \"x.name\" and 'y'. "
                                   "Don't tag \"two words\".")
    assert [r for r, label in runs if label] == ["os.path.join()", "shlex.quote", "x.name", "y"]
    tok = FakeTokenizer()
    rows = rows_lib.rows_of([{"text": "a ``b c`` d"}], bert_tasks.row_maker(_run("tag", seq_len=8), tok))
    assert [r["tags"].tolist() for r in rows] == [[-1, 0, 1, 1, 0, -1, -1, -1]]
    kinds = bert_tasks.docstring_kinds()  # labels are the AST owners of real stdlib docstrings
    assert kinds[inspect.cleandoc(json.JSONDecoder.__doc__)] == "class"
    assert kinds[inspect.cleandoc(json.dumps.__doc__)] == "function"
    assert inspect.cleandoc(json.__doc__) not in kinds  # module docstrings are left out
    records = [{"text": inspect.cleandoc(json.dumps.__doc__)}, {"text": "not a docstring"},
               {"text": inspect.cleandoc(json.JSONDecoder.__doc__)}]
    classify = bert_tasks.row_maker(_run("classify", seq_len=16), tok)
    rows = rows_lib.rows_of(records, classify)  # the record the default task does not label is skipped
    assert [int(r["labels"]) for r in rows] == [0, 1]
    assert rows[0]["tokens"].tolist()[:3] == [tok.sentinel_id(0), *tok.encode(records[0]["text"])[:2]]
    with pytest.raises(ValueError, match="outside"):
        rows_lib.rows_of([{"text": "x", "label": "3"}], classify)
    pair = rows_lib.rows_of([{"text": "a b c", "text_pair": "d e", "label": "1"}], classify)[0]
    assert pair["token_types"].tolist()[:8] == [0, 0, 0, 0, 0, 1, 1, 1]  # [CLS] a b c [SEP] d e [SEP]


def test_loss_sums_combine_mlm_and_nsp_as_documented():
    cfg = dataclasses.replace(bert.PRESETS["bert-tiny"], vocab_size=64, max_len=32)
    model = bert.Model(cfg)
    params = random_params(BERT, cfg)
    tok = FakeTokenizer()
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 60, (4, 32)).astype(np.int32)
    tokens[:, 0], tokens[:, 20], tokens[:, 31], tokens[2, 10:] = 63, 62, 62, 0
    rows = {"tokens": tokens, "token_types": (np.arange(32) > 20).astype(np.int32)[None].repeat(4, 0),
            "row": np.arange(4), "labels": np.array([0, 1, 1, 0], np.int32)}
    batch = bert_tasks.prepare_batch_fn(_run(seq_len=32), tok)(rows, [np.random.default_rng([0, r]) for r in range(4)])
    sums = jax.jit(lambda p, b: bert.loss_sums(model, p, b, jax.random.key(0), False))(params, batch)
    out = jax.jit(lambda p, b: model.apply({"params": p}, b["inputs"], b["segments"], None, b["token_types"]))(
        params, batch)
    log_p = jax.nn.log_softmax(out["mlm_logits"])
    nll = -np.take_along_axis(np.take_along_axis(np.asarray(log_p), batch["target_positions"][..., None], 1),
                              batch["targets"][..., None], 2)[..., 0]
    w = batch["weights"]
    nsp_nll = -np.asarray(jax.nn.log_softmax(out["nsp_logits"]))[np.arange(4), rows["labels"]]
    expected = (nll * w).sum() / w.sum() + (nsp_nll * w.sum(1)).sum() / w.sum()
    np.testing.assert_allclose(sums["loss_sum"] / sums["weight_sum"], expected, rtol=1e-5)
    np.testing.assert_allclose(sums["nsp_loss_sum"] / sums["nsp_count"], nsp_nll.mean(), rtol=1e-5)
    summary = bert.summarize(jax.device_get(sums))
    np.testing.assert_allclose(summary["mlm_loss"], (nll * w).sum() / w.sum(), rtol=1e-5)


def test_classification_metrics_match_definitions():
    y = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1, 1])
    p = np.array([0, 1, 0, 0, 1, 1, 1, 0, 1, 0])
    cm = np.zeros((2, 2))
    np.add.at(cm, (y, p), 1)
    tp, fp, fn, tn = 4, 1, 2, 3
    m = metrics.classification_metrics(cm)
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["mcc"] == pytest.approx((tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert metrics.classification_metrics(np.diag([3.0, 4.0, 5.0])) == {"f1": 1.0, "mcc": 1.0}


def test_regression_loss_is_mse_and_summed_moments_give_scipys_pearson():
    stats = pytest.importorskip("scipy.stats")
    cfg = dataclasses.replace(bert.PRESETS["bert-tiny"], vocab_size=64, max_len=16, task="classify", num_labels=1)
    bert.validate(cfg, 16)  # one label: a regression head (STS-B)
    model, params = bert.Model(cfg), random_params(BERT, cfg)
    rng = np.random.default_rng(0)
    B, L = 16, 16
    tokens = rng.integers(3, 64, (B, L)).astype(np.int32)
    segments = (np.arange(L)[None] < rng.integers(4, L + 1, (B, 1))).astype(np.int32)
    score_fn = jax.jit(lambda p: bert.logits(model, p, tokens, segments)[:, 0])
    # A random encoder scores every row nearly alike; rescale the head so scores spread like STS-B's
    # (mean 2.5, sd 1.3), the range in which float32 moment sums are accurate (see pearson_from_sums).
    raw = np.asarray(score_fn(params))
    gain = 1.3 / raw.std()
    head = params["classifier"]
    params["classifier"] = {"w": head["w"] * gain, "b": 2.5 - gain * (raw.mean() - head["b"])}
    scores = np.asarray(score_fn(params))
    labels = (scores + rng.normal(0.0, 1.0, B)).astype(np.float32)  # correlated, not fully
    weights = np.ones(B, np.float32)
    weights[-3:] = 0.0  # the padding rows of a last, partial batch
    zeros = np.zeros((B, 1), np.int32)
    batch = {"inputs": tokens, "segments": segments, "token_types": np.zeros_like(tokens), "target_positions": zeros,
             "targets": zeros, "weights": zeros.astype(np.float32), "labels": labels, "label_weights": weights}
    step = jax.jit(lambda p, b: bert.loss_sums(model, p, b, jax.random.key(0), False))
    halves = [jax.device_get(step(params, {k: v[rows] for k, v in batch.items()}))
              for rows in (slice(0, B // 2), slice(B // 2, B))]
    totals = {k: float(halves[0][k]) + float(halves[1][k]) for k in halves[0]}  # as evaluation adds batches up
    kept = weights > 0
    np.testing.assert_allclose(totals["loss_sum"] / totals["weight_sum"],
                               np.mean((scores[kept].astype(np.float64) - labels[kept]) ** 2), rtol=1e-5)
    expected = stats.pearsonr(scores[kept].astype(np.float64), labels[kept].astype(np.float64)).statistic
    assert 0.5 < expected < 0.99
    np.testing.assert_allclose(bert.summarize(totals)["pearson"], expected, rtol=1e-5)


def test_frozen_layers_and_embeddings_stay_bit_identical():
    from zoo import config, experiment, sharding, steps

    run = _run("classify", seq_len=16, num_layers=2, d_model=32, num_heads=2, d_ff=64, max_len=16)
    run = dataclasses.replace(run, optim=dataclasses.replace(run.optim, freeze_layers=1, warmup_steps=0),
                              data=dataclasses.replace(run.data, vocab_size=64),
                              train=config.TrainConfig(steps=3))
    one_device = sharding.make_mesh(devices=jax.devices()[:1])  # freezing does not depend on the mesh
    exp = experiment.build(run, None, tokenizer=FakeTokenizer(), mesh=one_device)
    state = exp.init_state()
    before = jax.device_get(state.params)
    step = steps.make_train_step(exp.family, exp.model, exp.tx, exp.layout, exp.mesh, exp.schedule, 0)
    records = [{"text": f"w{i} w{i + 1} w{i * 7}", "label": str(i % 2)} for i in range(8)]
    rows = rows_lib.stack(rows_lib.rows_of(records, bert_tasks.row_maker(run, exp.tokenizer)))
    prepare = bert_tasks.prepare_batch_fn(run, exp.tokenizer)
    from zoo import data
    with steps.on_mesh(exp.mesh):
        for i in range(3):
            batch = data.to_global(prepare(rows, [np.random.default_rng([i, r]) for r in range(8)]),
                                   exp.layout.batch_shardings)
            state, metrics = step(state, batch)
    after = jax.device_get(state.params)
    assert int(metrics["skipped"]) == 0
    for name in ("token_embed", "pos_embed", "type_embed", "embed_norm"):
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name])))
    for a, b in zip(jax.tree.leaves(before["layers"]), jax.tree.leaves(after["layers"])):
        np.testing.assert_array_equal(a[0], b[0])  # layer 0 frozen
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(jax.tree.leaves(before["layers"]),
                                                              jax.tree.leaves(after["layers"])))
    assert not np.array_equal(before["classifier"]["w"], after["classifier"]["w"])


def test_pretrain_eval_and_fine_tune_end_to_end(script, tmp_path):
    pre, fine = str(tmp_path / "pre"), str(tmp_path / "fine")
    common = ["--batch-size", "8", "--seq-len", "64", "--set", "train.eval_batches=2"]
    # eval.py compiles what train.py already compiled: share XLA's cache between the processes
    env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    script("train.py", "--model", "bert-tiny", "--workdir", pre, "--steps", "20", *common, env=env)
    script("eval.py", "--workdir", pre, "--json", str(tmp_path / "pre.json"), env=env)
    pre_metrics = json.loads((tmp_path / "pre.json").read_text())
    assert {"mlm_accuracy", "nsp_accuracy", "mlm_loss", "nsp_loss"} <= set(pre_metrics)
    assert pre_metrics["accuracy"] == pre_metrics["mlm_accuracy"]
    assert pre_metrics["loss"] == pytest.approx(pre_metrics["mlm_loss"] + pre_metrics["nsp_loss"], rel=0.05)
    proc = script("train.py", "--model", "bert-tiny", "--workdir", fine, "--steps", "6", *common,
                  "--set", "model.task=classify", "--set", "optim.freeze_layers=1", "--init-from", pre, env=env)
    assert "initialised 23/25 parameter arrays" in proc.stdout  # all but the new classifier's w and b
    report = proc.stdout[proc.stdout.index("validation:"):]
    assert all(f" {k} " in report for k in ("accuracy", "f1", "mcc"))


def test_glue_sst2_from_tfds_goes_through_the_classification_path():
    tfds = pytest.importorskip("tensorflow_datasets")
    from zoo import sources

    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        records = list(sources.iterate(sources.open_source("tfds:glue/sst2", "validation")))
    rows = rows_lib.stack(rows_lib.rows_of(records, bert_tasks.row_maker(_run("classify", seq_len=16), FakeTokenizer())))
    assert rows["labels"].tolist() == [int(r["label"]) for r in records]
    assert (rows["tokens"][:, 0] == 63).all()  # [CLS]
