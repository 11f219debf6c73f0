"""The time of one engine iteration: a roofline of its operators, each scaled by the
achievable efficiency the calibration table gives for the device (`calibration.py`).

Invariant: the model is pure arithmetic over the batch's shape; every datasheet number comes
from `specs`, every efficiency from `calibration`, and nothing is fitted to end-to-end
serving results. Everything is per GPU: tensor parallelism (tp) splits heads and the
intermediate dimension, pipeline parallelism (pp) splits layers.

One iteration, per layer of one pipeline stage (T = batched tokens = prefill chunk tokens +
one per decode; b = bytes per element; F, B = peak FLOP/s and HBM bytes/s):

  linear layers   QKV, O, MLP up(+gate), down, each a (T x K) @ (K x N) GEMM split by tp:
                  max(2TKN / (F gemm_eff), b(KN + TK + TN) / (B hbm_eff)), summed per GEMM.
  elementwise     norms, residual adds, RoPE, the activation: memory-bound,
                  b T (8h + 2(heads + kv_heads) d / tp + act I / tp) / (B hbm_eff); act = 3
                  gated (read gate and up, write), 2 plain. Norms run on every tp rank.
  prefill attn    a chunk of c tokens after p cached ones attends to c p + c(c+1)/2 pairs:
                  FLOPs 4 heads d pairs / tp; bytes: Q, O, the new K, V, and the K, V of
                  all p + c tokens; max(FLOPs / (F attn_prefill_eff), bytes / (B hbm_eff)).
  decode attn     a sequence with ctx cached tokens reads ctx + 1 tokens' K, V (its own new
                  one included): bandwidth-bound, bytes / (B attn_decode_eff).
  tp all-reduce   two per layer (after O and after down), a ring: each GPU moves
                  2 (tp-1)/tp T h b bytes, in latency + bytes / (link nvlink_eff). Over L
                  layers that is NanoFlow's T_net = 4 (N-1) B D S L / NetBW with NetBW = N
                  GPUs x one-way link (PAPERS.md section 17): the same bytes, counted per GPU.

Once per iteration: the LM head, a GEMM over the S sequences of the batch (every decode and
every prefill chunk, as vLLM computes logits for each scheduled sequence) on the last
stage; the fixed overhead (CPU scheduling, sampling, launches); with pp > 1, one activation
send of T h b bytes between stages. The terms add up: no overlap is modelled.

Pipeline parallelism: `time_s` is one stage's time, the slowest (ceil(L/pp) layers plus the
LM head), i.e. the period at which a full pipeline accepts a batch; one batch's latency
through the pipeline is pp stage times. `flops` and `bytes` are per GPU of that stage.

KV capacity: per GPU, HBM x utilisation - weights / (tp pp) - the reserved bytes, divided by
the per-GPU KV of one token (ceil(L/pp) layers; kv_heads / tp heads, at least one: vLLM
replicates KV heads when tp exceeds them)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from aios.errors import ConfigError
from aios.hardware.calibration import Calibration, load_calibration
from aios.hardware.profiles import IterationProfile
from aios.hardware.specs import DTYPE_BYTES, Device, ModelSpec

Link = Literal["nvlink", "pcie"]
_EMPTY = np.zeros(0, np.int64)


@dataclass(frozen=True, slots=True)
class IterationCost:
    """One iteration of one pipeline stage; times in seconds, `flops`/`bytes` per GPU."""
    time_s: float
    gemm_s: float           # linear layers, elementwise ops and the LM head
    attn_prefill_s: float
    attn_decode_s: float
    comm_s: float           # tp all-reduces and the pp send
    overhead_s: float
    flops: float
    bytes: float


class _Rates:
    """The per-model constants of one (model, device, tp, pp, dtype, calibration), folded
    into seconds per unit, so that an iteration costs a few multiply-adds."""
    __slots__ = ("_decode_base", "_decode_work", "ar_latency_s", "dec_s_per_ctx_token", "ar_s_per_token", "attn_flops_per_pair", "dec_byte_s", "elem_bytes_per_token",
                 "elem_s", "gemm_act_bytes_per_token", "gemm_flops_per_token", "gemm_weight_bytes", "gemms",
                 "kv_bytes", "layers", "lm_act_bytes_per_seq", "lm_flops_per_seq", "lm_head", "lm_weight_bytes",
                 "overhead_s", "seq_overhead_s", "pre_byte_s", "pre_flop_s", "q_bytes", "send_latency_s", "send_s_per_token")

    def __init__(self, model: ModelSpec, device: Device, tp: int, pp: int, dtype: str, cal: Calibration):
        b = DTYPE_BYTES[dtype]
        flops = device.flops(dtype) * cal.gemm_efficiency
        hbm = device.hbm_bytes_per_s * cal.hbm_efficiency
        h, d, inter = model.hidden_size, model.head_dim, model.intermediate_size
        heads = model.num_heads / tp
        kv_heads = math.ceil(model.num_kv_heads / tp)
        gated = model.mlp == "gated"
        shapes = [(h, (heads + 2 * kv_heads) * d),                   # QKV
                  (heads * d, h),                                    # O
                  (h, (2 if gated else 1) * inter / tp),             # up (and gate)
                  (inter / tp, h)]                                   # down
        # per GEMM: (compute s per token, weight-read s, activation s per token)
        self.gemms = tuple((2 * k * n / flops, k * n * b / hbm, (k + n) * b / hbm) for k, n in shapes)
        vocab = model.vocab_size / tp
        self.lm_head = (2 * h * vocab / flops, h * vocab * b / hbm, (h + vocab) * b / hbm)
        # two norms + residual adds (4h each), RoPE on Q and K, the activation (3 or 2 x I)
        act = 3 if gated else 2
        self.elem_bytes_per_token = (8 * h + 2 * (heads + kv_heads) * d + act * inter / tp) * b
        self.elem_s = self.elem_bytes_per_token / hbm
        self.gemm_flops_per_token = sum(2 * k * n for k, n in shapes)
        self.gemm_weight_bytes = sum(k * n for k, n in shapes) * b
        self.gemm_act_bytes_per_token = sum(k + n for k, n in shapes) * b
        self.lm_flops_per_seq = 2 * h * vocab
        self.lm_weight_bytes = h * vocab * b
        self.lm_act_bytes_per_seq = (h + vocab) * b
        # attention, per layer: FLOPs per attended pair; bytes of a token's Q+O and K+V
        self.attn_flops_per_pair = 4 * heads * d
        self.q_bytes = 2 * heads * d * b
        self.kv_bytes = 2 * kv_heads * d * b
        self.pre_flop_s = 1 / (device.flops(dtype) * cal.attention_prefill_efficiency)
        self.pre_byte_s = 1 / hbm
        self.dec_byte_s = 1 / (device.hbm_bytes_per_s * cal.attention_decode_efficiency)
        # communication over NVLink, or PCIe when the device has none
        if device.nvlink_bytes_per_s > 0:
            link = device.nvlink_bytes_per_s * cal.nvlink_efficiency
        else:
            link = device.pcie_bytes_per_s * cal.pcie_efficiency
        self.ar_s_per_token = 2 * (tp - 1) / tp * h * b / link if tp > 1 else 0.0
        self.ar_latency_s = cal.collective_latency_s if tp > 1 else 0.0
        self.send_s_per_token = h * b / link if pp > 1 else 0.0
        self.send_latency_s = cal.collective_latency_s if pp > 1 else 0.0
        self.layers = math.ceil(model.num_layers / pp)
        self.overhead_s = cal.overhead_s + cal.overhead_per_layer_s * self.layers
        self.seq_overhead_s = cal.overhead_per_seq_s
        self.dec_s_per_ctx_token = self.layers * self.kv_bytes * self.dec_byte_s   # one more cached token read
        self._decode_base: dict[int, float] = {}
        self._decode_work: dict[int, tuple[float, float]] = {}

    def terms(self, tokens: int, seqs: int, chunk_tokens: int, ctx_tokens: int, pairs: float, num_dec: int,
              read_tokens: int) -> tuple[float, float, float, float]:
        """(gemm_s, attn_prefill_s, attn_decode_s, comm_s) of an iteration of `tokens`
        tokens over `seqs` sequences: prefill chunks of `chunk_tokens` tokens after
        `ctx_tokens` cached ones, attending to `pairs` pairs; `num_dec` decodes reading
        `read_tokens` tokens of KV."""
        layers = self.layers
        layer_s = tokens * self.elem_s
        for flop_s, weight_s, act_s in self.gemms:
            layer_s += max(tokens * flop_s, weight_s + tokens * act_s)
        flop_s, weight_s, act_s = self.lm_head
        gemm_s = layers * layer_s + max(seqs * flop_s, weight_s + seqs * act_s)
        attn_prefill_s = attn_decode_s = 0.0
        if chunk_tokens:
            pre_flops = layers * self.attn_flops_per_pair * pairs
            pre_bytes = layers * (chunk_tokens * (self.q_bytes + self.kv_bytes) + (ctx_tokens + chunk_tokens) * self.kv_bytes)
            attn_prefill_s = max(pre_flops * self.pre_flop_s, pre_bytes * self.pre_byte_s)
        if num_dec:
            attn_decode_s = layers * (read_tokens * self.kv_bytes + num_dec * (self.q_bytes + self.kv_bytes)) * self.dec_byte_s
        comm_s = (layers * 2 * (self.ar_latency_s + tokens * self.ar_s_per_token)
                  + self.send_latency_s + tokens * self.send_s_per_token)
        return gemm_s, attn_prefill_s, attn_decode_s, comm_s

    def work(self, tokens: int, seqs: int, chunk_tokens: int, ctx_tokens: int, pairs: float, num_dec: int,
             read_tokens: int) -> tuple[float, float]:
        """(FLOPs, HBM bytes) per GPU of the iteration `terms` times (same arguments)."""
        layers = self.layers
        flops = (layers * tokens * self.gemm_flops_per_token + seqs * self.lm_flops_per_seq
                 + layers * self.attn_flops_per_pair * (pairs + (read_tokens if num_dec else 0)))
        nbytes = (layers * (self.gemm_weight_bytes + tokens * (self.gemm_act_bytes_per_token + self.elem_bytes_per_token))
                  + self.lm_weight_bytes + seqs * self.lm_act_bytes_per_seq)
        if chunk_tokens:
            nbytes += layers * (chunk_tokens * (self.q_bytes + self.kv_bytes) + (ctx_tokens + chunk_tokens) * self.kv_bytes)
        if num_dec:
            nbytes += layers * (read_tokens * self.kv_bytes + num_dec * (self.q_bytes + self.kv_bytes))
        return flops, nbytes

    def step_work(self, prefill_lens: list[int], prefill_ctx: list[int], num_dec: int,
                  dec_ctx_tokens: float) -> tuple[float, float]:
        """`work` from the engine's lists and sums, as `step_time` takes them (a decode-only
        iteration's from a cache by batch size: it is affine in the context)."""
        if not prefill_lens:
            base = self._decode_work.get(num_dec)
            if base is None:
                if not num_dec:
                    return 0.0, 0.0
                base = self._decode_work[num_dec] = self.work(num_dec, num_dec, 0, 0, 0.0, num_dec, num_dec)
            return (base[0] + dec_ctx_tokens * self.layers * self.attn_flops_per_pair,
                    base[1] + dec_ctx_tokens * self.layers * self.kv_bytes)
        chunk_tokens = sum(prefill_lens)
        tokens = chunk_tokens + num_dec
        if not tokens:
            return 0.0, 0.0
        pairs = sum(c * (p + (c + 1) / 2) for c, p in zip(prefill_lens, prefill_ctx, strict=True)) if chunk_tokens else 0.0
        return self.work(tokens, len(prefill_lens) + num_dec, chunk_tokens, sum(prefill_ctx), pairs, num_dec,
                         dec_ctx_tokens + num_dec)

    def step_time(self, prefill_lens: list[int], prefill_ctx: list[int], num_dec: int, dec_ctx_tokens: int) -> float:
        """`terms` summed with the overhead, from Python lists and sums (the engine's hot path).
        A decode-only iteration is affine in its context: its fixed part is cached by batch size."""
        if not prefill_lens:
            base = self._decode_base.get(num_dec)
            if base is None:
                if not num_dec:
                    return 0.0
                g, a, d, c = self.terms(num_dec, num_dec, 0, 0, 0.0, num_dec, num_dec)
                base = self._decode_base[num_dec] = g + a + d + c + self.overhead_s + num_dec * self.seq_overhead_s
            return base + dec_ctx_tokens * self.dec_s_per_ctx_token
        chunk_tokens = sum(prefill_lens)
        tokens = chunk_tokens + num_dec
        if not tokens:
            return 0.0
        pairs = 0.0
        if chunk_tokens:
            pairs = sum(c * (p + (c + 1) / 2) for c, p in zip(prefill_lens, prefill_ctx, strict=True))
        seqs = len(prefill_lens) + num_dec
        g, a, d, c = self.terms(tokens, seqs, chunk_tokens, sum(prefill_ctx), pairs, num_dec, dec_ctx_tokens + num_dec)
        return g + a + d + c + self.overhead_s + seqs * self.seq_overhead_s

    def cost(self, prefill_lens: np.ndarray, prefill_ctx: np.ndarray, decode_ctx: np.ndarray) -> IterationCost:
        num_pre, num_dec = len(prefill_lens), len(decode_ctx)
        chunk_tokens = int(prefill_lens.sum()) if num_pre else 0
        tokens = chunk_tokens + num_dec
        if tokens == 0:
            return IterationCost(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        seqs = num_pre + num_dec
        ctx_tokens = int(prefill_ctx.sum()) if num_pre else 0
        # a chunk of c after p cached tokens attends to c p + c (c + 1) / 2 pairs
        pairs = (float(np.dot(prefill_lens, prefill_ctx)) + (float(np.dot(prefill_lens, prefill_lens)) + chunk_tokens) / 2
                 if num_pre else 0.0)
        read_tokens = int(decode_ctx.sum()) + num_dec
        gemm_s, attn_prefill_s, attn_decode_s, comm_s = self.terms(tokens, seqs, chunk_tokens, ctx_tokens, pairs,
                                                                   num_dec, read_tokens)
        flops, nbytes = self.work(tokens, seqs, chunk_tokens, ctx_tokens, pairs, num_dec, read_tokens)
        overhead_s = self.overhead_s + seqs * self.seq_overhead_s
        time_s = gemm_s + attn_prefill_s + attn_decode_s + comm_s + overhead_s
        return IterationCost(time_s, gemm_s, attn_prefill_s, attn_decode_s, comm_s, overhead_s, flops, nbytes)


class CostModel:
    """`CostModel(model, device, tp=..., pp=..., dtype=...)`: iteration times for one serving
    instance of tp x pp GPUs. Raises ConfigError when the model does not fit."""

    def __init__(self, model: ModelSpec, device: Device, *, tp: int = 1, pp: int = 1, dtype: str = "fp16",
                 calibration: Calibration | None = None, profile: IterationProfile | None = None):
        if tp < 1 or pp < 1:
            raise ConfigError(f"tp and pp must be at least 1 (got tp={tp}, pp={pp})", field="tp" if tp < 1 else "pp")
        if model.num_heads % tp:
            divisors = [t for t in (1, 2, 4, 8, 16, 32, 64) if model.num_heads % t == 0]
            raise ConfigError(f"tp={tp} does not divide {model.name}'s {model.num_heads} attention heads",
                              field="tp", hint=f"use tp in {divisors}")
        if pp > model.num_layers:
            raise ConfigError(f"pp={pp} exceeds {model.name}'s {model.num_layers} layers", field="pp")
        if dtype not in DTYPE_BYTES:
            raise ConfigError(f"unknown dtype {dtype!r}", field="dtype", hint=f"one of: {', '.join(DTYPE_BYTES)}")
        self.model, self.device, self.tp, self.pp, self.dtype = model, device, tp, pp, dtype
        self.calibration = calibration if calibration is not None else load_calibration().for_device(device.name)
        b = DTYPE_BYTES[dtype]
        self.weight_bytes_per_gpu = model.weight_bytes(b) / (tp * pp)
        """Weights held by each GPU (embeddings and LM head spread evenly, a simplification)."""
        self.kv_bytes_per_token_per_gpu = (math.ceil(model.num_layers / pp) * 2 * math.ceil(model.num_kv_heads / tp)
                                           * model.head_dim * b)
        """K and V of one token on one GPU of the fullest stage."""
        self._check_fits()
        self._rates = _Rates(model, device, tp, pp, dtype, self.calibration)
        self._ideal = _Rates(model, device, tp, pp, dtype, self.calibration.ideal())
        self.profile = profile
        """Measured iteration times that replace the roofline's (aios.hardware.profiles), or None."""
        if profile is not None:
            if (profile.model, profile.device, profile.tp) != (model.name, device.name, tp):
                raise ConfigError(f"the profile of {profile.engine} is for {profile.model} on {profile.device} at "
                                  f"tp={profile.tp}, not {model.name} on {device.name} at tp={tp}", field="profile")
            self.step_time = self._profiled_step_time   # type: ignore[method-assign]

    def _check_fits(self) -> None:
        hbm, reserved = self.device.hbm_bytes, self.calibration.reserved_bytes
        need = self.weight_bytes_per_gpu + reserved
        if need <= hbm:
            return
        weights = self.model.weight_bytes(DTYPE_BYTES[self.dtype])
        min_gpus = math.ceil(weights / (hbm - reserved)) if hbm > reserved else math.inf
        tp = next((t for t in (2 ** i for i in range(7)) if t * self.pp >= min_gpus and self.model.num_heads % t == 0),
                  None)
        hint = (f"use tp={tp}" if tp else f"use tp x pp >= {min_gpus}") + " or a device with more memory"
        raise ConfigError(
            f"{self.model.name} does not fit on {self.device.name} at tp={self.tp}, pp={self.pp}: each GPU needs "
            f"{need / 1e9:.1f} GB ({weights / 1e9:.1f} GB of {self.dtype} weights / {self.tp * self.pp} GPUs + "
            f"{reserved / 1e9:.1f} GB reserved) but has {hbm / 1e9:.1f} GB", field="tp", hint=hint)

    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9) -> int:
        """KV tokens the instance holds once weights and the reserve are placed (0 if none)."""
        if not 0 < gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], not {gpu_memory_utilization}",
                              field="gpu_memory_utilization")
        free = (self.device.hbm_bytes * gpu_memory_utilization - self.weight_bytes_per_gpu
                - self.calibration.reserved_bytes)
        return max(0, int(free // self.kv_bytes_per_token_per_gpu))

    def iteration(self, prefill_lens: np.ndarray, prefill_ctx: np.ndarray, decode_ctx: np.ndarray) -> IterationCost:
        """One batched iteration: prefill chunks (`prefill_lens[i]` new tokens after
        `prefill_ctx[i]` already in the KV cache) and decodes (`decode_ctx[j]` tokens cached,
        one new). Integer numpy arrays, not checked (this is the simulator's hot path); an
        empty batch costs nothing. With a profile, `time_s` is the measured time and the
        breakdown is all zero (a fitted profile has none); FLOPs and bytes stay the roofline's."""
        cost = self._rates.cost(prefill_lens, prefill_ctx, decode_ctx)
        if self.profile is None or cost.time_s == 0:
            return cost
        time_s = self.step_time(prefill_lens.tolist(), prefill_ctx.tolist(), len(decode_ctx), int(decode_ctx.sum()))
        return IterationCost(time_s, 0.0, 0.0, 0.0, 0.0, 0.0, cost.flops, cost.bytes)

    def step_work(self, prefill_lens: list[int], prefill_ctx: list[int], num_decodes: int,
                  decode_ctx_tokens: float) -> tuple[float, float]:
        """(FLOPs, HBM bytes) per GPU of the iteration `step_time` times."""
        return self._rates.step_work(prefill_lens, prefill_ctx, num_decodes, decode_ctx_tokens)

    @property
    def peak_flops(self) -> float:
        return self.device.flops(self.dtype)

    @property
    def peak_bytes_per_s(self) -> float:
        return self.device.hbm_bytes_per_s

    def step_time(self, prefill_lens: list[int], prefill_ctx: list[int], num_decodes: int,
                  decode_ctx_tokens: int) -> float:
        """`iteration(...).time_s` from Python lists of the prefill chunks and the decodes'
        count and total cached context (a decode's cost is linear in its context), without
        building arrays or the breakdown: the engine calls this once or twice an iteration."""
        return self._rates.step_time(prefill_lens, prefill_ctx, num_decodes, decode_ctx_tokens)

    def _profiled_step_time(self, prefill_lens: list[int], prefill_ctx: list[int], num_decodes: int,
                            decode_ctx_tokens: int) -> float:
        """`step_time` from the measured profile: one stage of pp takes 1/pp of the whole."""
        return self.profile.step_s(prefill_lens, num_decodes, decode_ctx_tokens + num_decodes) / self.pp  # type: ignore[union-attr]

    def prefill_time(self, num_tokens: int) -> float:
        """One prompt of `num_tokens`, prefilled whole in one iteration."""
        return self.step_time([num_tokens], [0], 0, 0)

    def decode_time(self, batch: int, ctx: int) -> float:
        """One decode iteration of `batch` sequences with `ctx` tokens cached each."""
        return self.step_time([], [], batch, batch * ctx)

    def decode_roofline_tokens_per_s(self, batch: int, ctx: int) -> float:
        """The pure roofline bound on decode throughput (every efficiency 1, no fixed costs):
        `batch` tokens per ideal iteration; the achieved rate divided by it is the roofline share."""
        return batch / self._ideal.cost(_EMPTY, _EMPTY, np.full(batch, ctx, np.int64)).time_s

    def kv_transfer_s(self, num_tokens: int, link: Link, copy_tokens: int | None = None) -> float:
        """Moving `num_tokens` tokens' KV in or out of the instance (a swap over PCIe, a
        migration over NVLink): every GPU moves its own shard over its own link, in parallel.
        `copy_tokens`: the tokens one copy call moves, per layer and K/V tensor (vLLM swaps
        block by block, 16 tokens a copy); each call costs `copy_latency_s` besides its bytes.
        None: one large copy (latency ignored)."""
        if link == "pcie":
            rate = self.device.pcie_bytes_per_s * self.calibration.pcie_efficiency
        elif link == "nvlink":
            if not self.device.nvlink_bytes_per_s:
                raise ConfigError(f"{self.device.name} has no NVLink", field="link", hint='use link="pcie"')
            rate = self.device.nvlink_bytes_per_s * self.calibration.nvlink_efficiency
        else:
            raise ConfigError(f"unknown link {link!r}", field="link", hint="nvlink or pcie")
        if num_tokens < 0:
            raise ConfigError(f"cannot move {num_tokens} tokens", field="num_tokens")
        seconds = num_tokens * self.kv_bytes_per_token_per_gpu / rate
        if copy_tokens:
            layers = math.ceil(self.model.num_layers / self.pp)
            seconds += 2 * layers * -(-num_tokens // copy_tokens) * self.calibration.copy_latency_s
        return seconds
