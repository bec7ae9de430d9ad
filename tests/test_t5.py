"""T5 against independent references: Hugging Face's PyTorch T5, published sizes, the paper's objectives."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from conftest import T5_INPUTS, T5_STEPS, FakeTokenizer, perturbed, random_params, tiny_t5_config
from models.t5 import FAMILY as T5, data as t5_tasks, hf as t5_hf, model as t5
from zoo import decode, metrics, steps

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = t5.Config(num_layers=2, num_decoder_layers=3, d_model=32, num_heads=4, head_dim=8, d_ff=48, vocab_size=96,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20)

TINY_V11 = t5.Config(num_layers=2, num_decoder_layers=3, d_model=32, num_heads=4, head_dim=8, d_ff=48, vocab_size=96,
                     relative_attention_num_buckets=8, relative_attention_max_distance=20, activation="gelu_tanh",
                     gated_mlp=True, tie_embeddings=False, dropout=0.0)


def _hf_model(feed_forward_proj: str, tie: bool, decoder_layers: int = 3):
    """A tiny random Hugging Face T5, every weight perturbed so that the mapping is really tested."""
    config = transformers.T5Config(
        vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=decoder_layers, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj=feed_forward_proj,
        tie_word_embeddings=tie, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return perturbed(transformers.T5ForConditionalGeneration(config))


def _torch_logits(model, ids, dec, mask=None):
    kwargs = {} if mask is None else {"attention_mask": torch.tensor(mask)}
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(dec), **kwargs).logits.numpy()


def _padded_inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 96, (2, 30))
    mask = np.ones_like(ids)
    ids[1, 17:], mask[1, 17:] = 0, 0  # the second input is right-padded
    dec = rng.integers(2, 96, (2, 25))
    dec[:, 0] = 0  # decoder start id
    return ids, mask, dec


@pytest.mark.parametrize("proj,tie", [("relu", True), ("gated-gelu", False)], ids=["v1.0", "v1.1"])
def test_hf_parity_and_round_trip(proj, tie, tmp_path):
    hf = _hf_model(proj, tie)
    hf.save_pretrained(tmp_path / "hf")
    m = zoo.load_hf(str(tmp_path / "hf"))
    assert m.config.model.tie_embeddings == tie and m.config.model.gated_mlp == (proj != "relu")
    assert m.num_params == sum(p.numel() for p in hf.parameters())
    ids, mask, dec = _padded_inputs()
    diff = np.abs(m.logits(ids, dec, attention_mask=mask) - _torch_logits(hf, ids, dec, mask)).max()
    assert diff <= 1e-4
    # every name of the HF state dict, tied copies included, and nothing else
    assert set(t5_hf.params_to_hf(m.params, m.config.model)) == set(hf.state_dict())
    m.save_hf(str(tmp_path / "back"))
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    assert np.abs(_torch_logits(reloaded, ids, dec, mask) - m.logits(ids, dec, attention_mask=mask)).max() <= 1e-4


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("buckets,distance", [(32, 128), (8, 20)])
def test_relative_buckets_match_hugging_face(bidirectional, buckets, distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    n = 1500
    ref = T5Attention._relative_position_bucket(torch.arange(-(n - 1), n), bidirectional=bidirectional,
                                                num_buckets=buckets, max_distance=distance)
    np.testing.assert_array_equal(t5.relative_buckets(n, bidirectional, buckets, distance), ref.numpy())


@pytest.mark.parametrize("name", sorted(t5.PRESETS))
def test_preset_parameter_counts_match_hugging_face(name):
    cfg = t5.PRESETS[name]
    hf_cfg = {k: v for k, v in t5_hf.config_to_hf(cfg).items() if k not in ("model_type", "architectures")}
    with torch.device("meta"):
        hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**hf_cfg))
    expected = sum(p.numel() for p in hf.parameters())
    assert steps.num_params(T5, cfg) == expected
    published = {"t5-small": 60_506_624, "t5-base": 222_903_552, "t5-large": 737_668_096,
                 "t5.1.1-small": 76_961_152, "t5.1.1-base": 247_577_856}
    if name in published:
        assert expected == published[name]
    assert t5_hf.config_from_hf(t5_hf.config_to_hf(cfg)) == dataclasses.replace(cfg, num_decoder_layers=cfg.decoder_layers)


def test_greedy_decode_matches_hugging_face_generate():
    hf = _hf_model("gated-gelu", False, decoder_layers=2)  # HF 4.57's generate cache assumes equal depths
    cfg = t5_hf.config_from_hf(hf.config.to_dict())
    assert cfg == tiny_t5_config()  # the same shapes: one compilation of the decoding loop for both files
    params = jax.tree.map(jnp.asarray, t5_hf.params_from_hf({k: v.numpy() for k, v in hf.state_dict().items()}, cfg))
    inputs = T5_INPUTS  # different lengths: padding must not leak
    ours = decode.generate_seq2seq(t5.Model(cfg), params, inputs, T5_STEPS, eos_id=1)
    tokens, segments = decode.right_pad(inputs, 0)
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(segments),
                          max_new_tokens=T5_STEPS, do_sample=False, num_beams=1).numpy()
    for row, ref_row in zip(ours, ref[:, 1:].tolist()):  # HF rows start with the decoder start id
        cut = ref_row[: ref_row.index(1) + 1] if 1 in ref_row else ref_row
        assert row == cut


def test_packed_examples_equal_separate_examples():
    model, params = t5.Model(TINY), random_params(T5, TINY, scale=0.5)
    rng = np.random.default_rng(1)
    pairs = [(rng.integers(3, 90, 7).tolist(), rng.integers(3, 90, 4).tolist()),
             (rng.integers(3, 90, 9).tolist(), rng.integers(3, 90, 6).tolist())]
    packed = t5_tasks.pack_pairs(pairs, seq_len=24, target_len=16, eos_id=1)
    assert len(packed["encoder_inputs"]) == 1  # both fit in one row
    alone = [t5_tasks.pack_pairs([p], seq_len=24, target_len=16, eos_id=1) for p in pairs]
    rows = {k: np.concatenate([packed[k]] + [a[k] for a in alone]) for k in packed}  # one batch, one compile
    batch = t5_tasks.finish_batch(**rows)
    logits = jax.jit(model.apply)({"params": params}, batch["encoder_inputs"], batch["decoder_inputs"],
                                  batch["encoder_segments"], batch["decoder_segments"])
    start = 0
    for i, (_, tgt) in enumerate(pairs, 1):
        np.testing.assert_allclose(logits[0, start:start + len(tgt) + 1], logits[i, :len(tgt) + 1], atol=1e-4)
        start += len(tgt) + 1
    assert batch["decoder_weights"][0, start:].sum() == 0


def test_span_corruption_follows_the_paper():
    seq_len = 512
    raw = t5_tasks.span_corruption_raw_len(seq_len, 0.15, 3.0)
    assert (raw, t5_tasks.span_corruption_lengths(raw, 0.15, 3.0)[:2]) == (568, (512, 114))  # T5's own numbers
    vocab, eos = 1000, 1
    tokens = np.arange(10, 10 + raw, dtype=np.int32)
    inputs, targets = t5_tasks.span_corruption(tokens, np.random.default_rng(0), 0.15, 3.0, vocab, eos)
    assert len(inputs) == 512 and len(targets) == 114 and inputs[-1] == eos and targets[-1] == eos
    sentinels_in = inputs[inputs >= vocab - 100]
    sentinels_out = targets[targets >= vocab - 100]
    np.testing.assert_array_equal(sentinels_in, vocab - 1 - np.arange(len(sentinels_in)))  # from the top, descending
    np.testing.assert_array_equal(sentinels_in, sentinels_out)
    assert len(sentinels_in) == round(85 / 3)
    # the original text is recovered by putting each target span back in place of its sentinel
    spans = np.split(targets[:-1], np.flatnonzero(targets[:-1] >= vocab - 100))[1:]
    restored = np.concatenate([s[1:] if s[0] >= vocab - 100 else s for s in
                               _fill(inputs[:-1], {int(s[0]): s[1:] for s in spans}, vocab)])
    np.testing.assert_array_equal(restored, tokens)
    again = t5_tasks.span_corruption(tokens, np.random.default_rng(0), 0.15, 3.0, vocab, eos)
    np.testing.assert_array_equal(again[0], inputs)  # same seed, same noise: resume is exact


def _fill(inputs, spans, vocab):
    return [spans[int(t)] if t >= vocab - 100 else np.array([t]) for t in inputs]


def test_noise_mask_statistics():
    rng = np.random.default_rng(0)
    masks = np.stack([t5_tasks.noise_mask(200, 0.15, 3.0, rng) for _ in range(200)])
    assert (masks.sum(axis=1) == 30).all() and not masks[:, 0].any()
    starts = masks[:, 1:] & ~masks[:, :-1]
    assert (starts.sum(axis=1) == 10).all()  # 30 noise tokens in spans of mean length 3
    # as in T5, the mask starts with kept tokens and ends with noise; in between no position is special
    assert masks[:, -1].all() and 0.05 < masks.mean(axis=0)[1:150].min() and masks.mean(axis=0)[1:150].max() < 0.3


def test_prefix_lm_and_shifted_decoder_inputs():
    rng = np.random.default_rng(0)
    tokens = np.arange(10, 40, dtype=np.int32)
    for _ in range(20):
        inp, tgt = t5_tasks.prefix_lm(tokens, rng, target_len=12, eos_id=1)
        assert inp[-1] == 1 and tgt[-1] == 1 and len(tgt) <= 12 and len(inp) >= 2
        np.testing.assert_array_equal(np.concatenate([inp[:-1], tgt[:-1]]), tokens)
    rows = t5_tasks.pack_pairs([([5, 6], [7, 8]), ([9], [10])], seq_len=8, target_len=8, eos_id=1)
    batch = t5_tasks.finish_batch(**rows)
    assert batch["decoder_targets"][0].tolist() == [7, 8, 1, 10, 1, 0, 0, 0]
    assert batch["decoder_inputs"][0].tolist() == [0, 7, 8, 0, 10, 0, 0, 0]  # each segment starts afresh
    assert batch["decoder_segments"][0].tolist() == [1, 1, 1, 2, 2, 0, 0, 0]


def test_summary_task_and_rouge():
    text = 'The "assert" statement\n**********\n\nAssert statements are a convenient way to insert debugging ' \
           'assertions into a program, and they are checked only when optimisation is off.'
    pair = t5_tasks.summary_pair(text)
    assert pair["target"] == 'The "assert" statement' and pair["input"].startswith("summarize: Assert statements")
    assert t5_tasks.summary_pair("One paragraph only") is None
    assert metrics.rouge_l("the cat sat", "the cat sat") == 1.0
    assert metrics.rouge_l("a b c d", "a x c y") == pytest.approx(0.5)  # LCS "a c": P = R = 1/2
    assert metrics.rouge_l("", "x") == 0.0


def test_generation_metrics_score_the_generated_texts():
    from zoo import config as config_lib

    cfg = dataclasses.replace(tiny_t5_config(), objective="seq2seq", target_len=T5_STEPS)
    model, params = t5.Model(cfg), random_params(T5, cfg, scale=0.5)
    tok = FakeTokenizer(vocab_size=96, num_sentinels=0)
    records = [{"input": "abc de", "target": "x"}, {"input": "de", "target": "y"}]
    run = config_lib.Config(preset="t5-tiny", family="t5", model=cfg, data=config_lib.DataConfig(seq_len=16, batch_size=2))
    out = T5.generation_metrics(model, params, tok, records, run)
    generated = decode.generate_text(model, params, tok, ["abc de", "de"], T5_STEPS, encoder_decoder=True)
    assert out == {**metrics.generation_scores(generated, ["x", "y"]), "generated": 2}
    assert 0.0 <= out["rouge_l"] <= 1.0 and 0.0 <= out["bleu"] <= 100.0


def test_end_to_end_pretrain_eval_and_finetune(script, tmp_path):
    words = "the a module returns value list of string function class object file name data".split()
    rng = np.random.default_rng(0)
    text = tmp_path / "corpus.jsonl"
    text.write_text("\n".join(json.dumps({"text": " ".join(rng.choice(words, 12))}) for _ in range(300)))
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    tiny = ["--set", "model.num_layers=1", "--set", "model.d_model=32", "--set", "model.num_heads=2",
            "--set", "model.head_dim=16", "--set", "model.d_ff=64", "--set", "data.vocab_size=300",
            "--set", "model.num_sentinels=8", "--set", "train.sample_tokens=4", "--batch-size", "4"]
    # eval.py compiles what train.py already compiled: share XLA's cache between the processes
    env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    proc = script("train.py", "--model", "t5-tiny", "--data", f"text:{text}", "--steps", "3", "--seq-len", "32",
                  "--workdir", str(pre), *tiny, env=env)
    assert "<extra_id_" in proc.stdout or "->" in proc.stdout  # closing samples were generated
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"input": " ".join(rng.choice(words, 6)), "target": w})
                               for w in rng.choice(words, 60)))
    # span corruption at seq_len 32 makes 8 decoder tokens: fine-tuning with the same shapes reuses the compilations
    proc = script("train.py", "--model", "t5-tiny", "--data", f"text:{pairs}", "--steps", "3", "--seq-len", "32",
                  "--workdir", str(fine), "--init-from", str(pre), "--set", "model.objective=seq2seq",
                  "--set", "model.target_len=8", *tiny, env=env)
    assert "initialised" in proc.stdout
    assert (fine / "tokenizer.model").read_bytes() == (pre / "tokenizer.model").read_bytes()  # same vocabulary
    assert json.loads((fine / "config.json").read_text())["model"]["objective"] == "seq2seq"
    script("eval.py", "--workdir", str(fine), "--json", str(tmp_path / "m.json"), "--samples", "0", env=env)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["step"] == 3 and np.isfinite(metrics["loss"]) and "accuracy" in metrics


def test_sharded_forward_matches_one_device():
    from zoo import config as config_lib, data, experiment, sharding, sources, steps
    from zoo.tokenizer import Tokenizer

    texts = [" ".join(np.random.default_rng(i).choice(list("abcdefghij"), 200)) for i in range(40)]
    tokenizer = Tokenizer.train(texts, 300, sentinels=8)
    model = dataclasses.replace(TINY, num_sentinels=8)
    cfg = config_lib.Config(preset="t5-tiny", family="t5", model=model,
                            data=config_lib.DataConfig(batch_size=8, seq_len=32))
    params = random_params(T5, dataclasses.replace(model, vocab_size=300), scale=0.5)
    results = []
    for shape in ((1, 1, 1), (2, 2, 2)):
        mesh = sharding.make_mesh(*shape, devices=jax.devices()[: int(np.prod(shape))])
        exp = experiment.build(cfg, None, tokenizer=tokenizer, mesh=mesh)
        placed = jax.device_put(params, exp.layout.shardings.params)
        host = next(exp.split("train", sources.RecordList([{"text": t} for t in texts])).batches())
        batch = data.to_global(host.inputs, exp.layout.batch_shardings)
        with steps.on_mesh(exp.mesh):
            results.append(steps.make_eval_step(exp.family, exp.model, exp.layout, exp.mesh)(placed, batch))
    one, eight = jax.device_get(results)
    assert one["weight_sum"] == eight["weight_sum"] == 8 * 8  # span corruption at seq_len 32: 8 targets a row
    np.testing.assert_allclose(eight["loss_sum"], one["loss_sum"], rtol=1e-5)
    spec = exp.layout.shardings.params["decoder"]["relpos_bias"].spec
    assert tuple(spec) == (None, "tensor")  # (relpos, heads): heads split over the tensor axis


@pytest.mark.parametrize("name", ["t5-small", "t5.1.1-small"])
def test_flops_per_token_matches_xla_cost_analysis(name):
    # one layer per stack: XLA's cost analysis counts a scanned loop's body once
    cfg = dataclasses.replace(t5.PRESETS[name], num_layers=1, num_decoder_layers=1, vocab_size=1000)
    model, S = t5.Model(cfg), 64
    T = t5_tasks.decoder_len(cfg, S)
    params = jax.eval_shape(lambda: nn.meta.unbox(t5.init_params(model, jax.random.key(0),
                                                                 jax.tree.map(jnp.asarray, t5.init_batch(1, 8)))))
    batch = {k: jax.ShapeDtypeStruct((2, S if k.startswith("encoder") else T), v.dtype)
             for k, v in t5.init_batch(1, 8).items()}
    grads = jax.jit(jax.grad(lambda p, b: t5.loss_sums(model, p, b, jax.random.key(0), True)["loss_sum"]))
    measured = grads.lower(params, batch).cost_analysis()["flops"]
    assert t5.flops_per_token(cfg, S) * S * 2 == pytest.approx(measured, rel=0.05)
