"""Ours / theirs ratios of a benchmark result and its human-readable table (pure: no JAX, no peers)."""

from __future__ import annotations

from typing import Any

# (label, our key, their key, format, better) for the train figures compared with peers
TRAIN_ROWS = (
    ("first step (compile) s", "first_step_s", "compile_s", "{:.2f}", "lower"),
    ("step s, median", "step_s_median", "step_s_median", "{:.3f}", "lower"),
    ("tokens/s", "tokens_per_s", "tokens_per_s", "{:,.0f}", "higher"),
    ("MFU", "mfu", "mfu", "{:.1%}", "higher"),
    ("peak memory MB", "peak_mem_bytes", "peak_mem_bytes", "{:,.0f}", "lower"),
)
# (label, key, format, better) for the decode figures of each batch size
DECODE_ROWS = (("tokens/s", "tokens_per_s", "{:,.1f}", "higher"), ("first token s", "first_token_s", "{:.4f}", "lower"))


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float, devices: int) -> float:
    """Model FLOPs utilisation: flops_per_token x tokens/s over devices x peak FLOP/s per device."""
    return flops_per_token * tokens_per_s / (peak_flops * devices)


def add_ratios(result: dict[str, Any]) -> None:
    """Add each peer's train MFU (same FLOPs formula) and ours/theirs ratios per figure, in place."""
    ours_train, ours_decode = result.get("train"), result.get("decode", {})
    for peer in result.get("peers", {}).values():
        if "unavailable" in peer:
            continue
        ratios: dict[str, float] = {}
        theirs = peer.get("train", {})
        if ours_train and "tokens_per_s" in theirs:
            theirs["mfu"] = mfu(ours_train["flops_per_token"], theirs["tokens_per_s"], result["peak"]["peak_flops"],
                                result["device"]["device_count"])
            for _, ours_key, their_key, _, _ in TRAIN_ROWS:
                if theirs.get(their_key):
                    ratios[f"train_{ours_key}"] = ours_train[ours_key] / theirs[their_key]
        for b, figures in peer.get("decode", {}).items():
            for _, key, _, _ in DECODE_ROWS:
                if key in figures and key in ours_decode.get(b, {}):
                    ratios[f"decode_{b}_{key}"] = ours_decode[b][key] / figures[key]
        peer["ratios"] = ratios


def report(result: dict[str, Any]) -> str:
    """The human-readable table of a result (after `add_ratios`)."""
    peers = list(result.get("peers", {}).items())
    header = f"{'':26s}{'zoo':>14s}" + "".join(f"{name:>14s}{'zoo/' + name:>15s}" for name, _ in peers)
    lines = _heading(result, peers)
    if "train" in result:
        lines += ["", _titled("train", header)] + _train_lines(result["train"], peers)
    if "decode" in result:
        lines += [""] + _decode_lines(result["decode"], peers, header)
    if "input" in result:
        i = result["input"]
        ratio = "" if i["ratio_vs_step"] is None else (
            f" = {i['ratio_vs_step']:,.0f}x the train step's {i['step_batches_per_s']:.2f} batches/s")
        lines += ["", f"input: {i['batches_per_s']:,.1f} batches/s, {i['tokens_per_s']:,.0f} tokens/s{ratio} "
                           f"({i['data']}, {i['workers']} workers); a v5e chip at 50% MFU eats "
                           f"{i['v5e_tokens_per_s_at_half_mfu']:,.0f} tokens/s = {i['processes_per_v5e_chip']:.1f}x this"]
    if "compile" in result:
        c = result["compile"]
        depths = [k for k in c if k.startswith("layers_")]
        lines += ["", f"compile vs depth (d_model {c['d_model']}): " + ", ".join(
            f"{k[7:-2]} layers {c[k]:.2f} s" for k in depths) + f"; ratio {c['ratio']:.2f}"]
    return "\n".join(lines)


def _heading(result: dict[str, Any], peers: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The run's shape, device and peak, then one line per peer that is missing or not like for like."""
    dev, peak, cfg = result["device"], result["peak"], result["config"]
    lines = [f"zoo bench: {result['model']} ({cfg['family']}), batch {cfg['data']['batch_size']} x seq "
             f"{cfg['data']['seq_len']}, {cfg['model']['dtype']}, remat={cfg['model'].get('remat')}, "
             f"attention={cfg['model'].get('attention_impl')} | {dev['device_kind']} x{dev['device_count']} "
             f"| jax {dev['jax_version']} | load {result['load_start']}",
             f"matmul {peak['matmul_n']}^2 {peak['matmul_dtype']} measured {peak['measured_matmul_flops'] / 1e9:,.0f} "
             f"GFLOP/s; MFU peak {peak['peak_flops'] / 1e9:,.0f} GFLOP/s ({peak['peak_source']})"]
    for name, peer in peers:
        if "unavailable" in peer:
            lines.append(f"{name}: {peer['unavailable']}")
        elif "mismatch" in peer:
            lines.append(f"{name}: not like for like: {peer['mismatch']}")
    return lines


def _train_lines(t: dict[str, Any], peers: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = [f"  {'lower+compile s':24s}{t['compile_s']:>14.2f}"]
    for label, ours_key, their_key, fmt, better in TRAIN_ROWS:
        theirs = [(p.get("train", {}).get(their_key), p.get("ratios", {}).get(f"train_{ours_key}")) for _, p in peers]
        lines.append(_row(label, t[ours_key], theirs, fmt, better, scale=1e-6 if "mem" in ours_key else 1))
    lines.append(f"  {'step s min-max':24s}{t['step_s_min']:>7.3f}-{t['step_s_max']:<6.3f}"
                 f"   (params {t['num_params']:,}, loss {t['loss']:.3f}, memory from {t['mem_source']})")
    return lines


def _decode_lines(d: dict[str, Any], peers: list[tuple[str, dict[str, Any]]], header: str) -> list[str]:
    if "skipped" in d:
        return [f"decode: skipped ({d['skipped']})"]
    lines = [_titled(f"decode (greedy, prompt {d['prompt_len']}, {d['new_tokens']} new)", header)]
    for b in [k for k in d if k.startswith("batch_")]:
        for label, key, fmt, better in DECODE_ROWS:
            theirs = [(p.get("decode", {}).get(b, {}).get(key), p.get("ratios", {}).get(f"decode_{b}_{key}"))
                      for _, p in peers]
            lines.append(_row(f"batch {b[6:]} {label}", d[b][key], theirs, fmt, better))
    return lines


def _titled(title: str, header: str) -> str:
    """The column header with `title` written over its start."""
    return title + header[len(title):]


def _row(label: str, ours: float, theirs: list[tuple[Any, Any]], fmt: str, better: str, scale: float = 1) -> str:
    cell = lambda v: "-" if v is None else fmt.format(v * scale)  # noqa: E731
    text = f"  {label:24s}{cell(ours):>14s}"
    for value, ratio in theirs:
        text += f"{cell(value):>14s}{('-' if ratio is None else f'{ratio:.2f}x'):>15s}"
    return text + f"   ({better} is better)"
