"""Real numerics inside the simulation: interprets a plan's actions with the numba kernels.

The engine calls :meth:`Numerics.run` when a task completes, so every tile multiplies its own block and
partial sums are added in exactly the order the mapping reduces them. Tensors live in one store keyed by op
name (a simulation convenience: which tile holds which block is the plan's business). Every stored value is
rounded to the storage precision; products and partial sums accumulate in fp32.

Consecutive ``MatmulBlock`` actions (the tiles of one step, and of the tasks that end together) are queued and
multiplied in parallel when the next other action (or a read) comes: they only read the store, which only other
actions write, and their results enter the buffers in queue order, so every value is bit for bit what running
them one by one gives.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import fields, replace
from itertools import pairwise

import numpy as np

from ..kernels import (
    causal_softmax_many,
    embedding,
    gelu,
    gemm,
    gemm_blocks,
    layernorm,
    rmsnorm,
    rope,
    round_in_place,
    round_to,
    silu_gate,
    slab_room,
)
from ..mapping.plan import (
    Combine,
    ContextWrite,
    DecodeAttnCombine,
    DecodeAttnPartial,
    Elementwise,
    Free,
    MatmulBlock,
    ModelPlan,
    OpPlan,
    ReduceWrite,
    Ref,
    Rope,
    SoftmaxBlock,
)
from ..workloads import OpKind, WorkloadGraph
from ..workloads.weights import ModelWeights

# Elementwise functions whose every output element depends on the same element of the inputs alone: consecutive
# actions of one of them are queued and run as one (Numerics._run_elementwise).
PER_ELEMENT = ("gelu", "swiglu", "add", "copy")
MAX_PENDING_BLOCKS = 512  # queued MatmulBlock actions before a flush (bounds the memory of unread products)
# Queued products' bytes before a flush. One flush's products share one new buffer: kept this small, it stays in
# the last-level cache (32 MiB on the machine of benchmarks/README.md) for the adds that follow, and malloc reuses
# freed memory for it instead of mapping fresh pages. The 111M LM head's 512 blocks (1.6 MB each) made 730 MB
# buffers: 1.75 CPU s per forward, against 0.8 s in 16 MB flushes (section (f) "on branch gemmk").
MAX_PENDING_BYTES = 16 << 20
# A flush's products go to a reused buffer (a "slab") of at least MAX_PENDING_BYTES plus this slack: the queue
# passes MAX_PENDING_BYTES by at most its last block (the 111M LM head's 64 x 6283 blocks are 1.6 MB).
SLAB_SLACK_BYTES = 4 << 20


class Numerics:
    """Tensor store plus an interpreter for plan actions.

    The KV cache (``<layer>.k_cache#<sequence>``, ``v_cache``) holds ``cache_capacity`` positions per sequence
    (default: what this graph needs). :meth:`next_pass` moves the same store on to another pass of the same
    model (a decode step after a prefill), keeping weights and caches: how ``generate`` runs.
    """

    max_pending_blocks = MAX_PENDING_BLOCKS  # 1 multiplies every block as it comes (the serial path)
    max_pending_bytes = MAX_PENDING_BYTES

    def __init__(self, graph: WorkloadGraph, weights: ModelWeights, token_ids: np.ndarray,
                 cache_capacity: int | None = None, adopt_weights: bool = False):
        """``adopt_weights``: the weights' arrays are this executor's to keep (made for this run alone, such as
        its seeded random weights): they are rounded to the storage precision in place and stored as they are,
        instead of as rounded copies. For the 111M model that spares 444 MB of new memory, whose first touch
        cost 0.5-1.2 CPU s (mostly system time) on the machine of benchmarks/README.md; the values stored are the
        same."""
        cfg = graph.config
        self.eps = cfg.layer_norm_epsilon
        self.activation = cfg.activation
        self.theta, self.head_dim, self.rope_scaling = cfg.rope_theta, cfg.head_dim, cfg.rope_scaling
        self.cache_capacity = cache_capacity or graph.cache_positions
        self._setup(graph)
        self.next_pass(graph, token_ids)
        self._load_weights(weights, adopt_weights)
        self._reserve_arena()

    def next_pass(self, graph: WorkloadGraph, token_ids: np.ndarray) -> None:
        """Run ``graph`` (same model and precision) next, on ``token_ids [batch, seq]``; caches are kept."""
        self.flush()
        cfg = graph.config
        if token_ids.shape != (graph.batch, graph.seq):
            raise ValueError(f"token ids have shape {token_ids.shape}, expected {(graph.batch, graph.seq)}")
        if graph.cache_positions > self.cache_capacity:
            raise ValueError(f"KV cache holds {self.cache_capacity} positions, the pass needs {graph.cache_positions}")
        for name in [k for k in self.store if k not in self._weights and "_cache#" not in k]:
            del self.store[name]  # activations of the previous pass
        self._setup(graph)
        self.context = graph.context
        self.token_ids = np.ascontiguousarray(token_ids, dtype=np.int64)
        for op in graph.ops():
            if op.kind in (OpKind.ATTN_CONTEXT, OpKind.ATTN_DECODE):
                self.shapes[op.name] = (graph.tokens, cfg.d_model)
            if op.kind in (OpKind.ATTN_SCORES, OpKind.ATTN_DECODE) and cfg.is_llama:
                self.shapes[f"{op.block}.qk_rope"] = (graph.tokens, cfg.d_model + cfg.kv_width)
            if op.kind == OpKind.ATTN_DECODE:
                for bidx in range(graph.batch):
                    for which in ("k", "v"):
                        self.shapes[f"{op.block}.{which}_cache#{bidx}"] = (self.cache_capacity, cfg.kv_width)

    def fill_cache(self, graph: WorkloadGraph) -> None:
        """Copy a finished prefill's keys (rotated) and values into the KV cache of every layer."""
        self.flush()  # the prefill's queued actions, if any
        cfg = graph.config
        d, kv = cfg.d_model, cfg.kv_width
        for layer in range(cfg.n_layer):
            p = f"layer{layer}."
            keys = self.store[p + "qk_rope"][:, d:] if cfg.is_llama else self.store[p + "qkv"][:, d:d + kv]
            values = self.store[p + "qkv"][:, d + kv:]
            for bidx in range(graph.batch):
                rows = slice(bidx * graph.seq, (bidx + 1) * graph.seq)
                for which, src in (("k", keys), ("v", values)):
                    cache = np.zeros((self.cache_capacity, kv), dtype=np.float32)
                    cache[:graph.seq] = src[rows]
                    self.store[f"{p}{which}_cache#{bidx}"] = cache

    @classmethod
    def for_tensors(cls, graph: WorkloadGraph, tensors: dict[str, np.ndarray]) -> Numerics:
        """An executor for a single-operator workload (``lower_gemm``): inputs and weights given by name."""
        self = cls.__new__(cls)
        self._setup(graph)
        for name, arr in tensors.items():
            self._put(name, arr)
        return self

    @classmethod
    def bare(cls, precision: str) -> Numerics:
        """An executor with an empty store and no graph, for running one op's plan outside an engine run
        (:func:`run_matmul_plan`, training's attention): the caller puts the operands and the output shapes."""
        self = cls.__new__(cls)
        self.precision, self.store, self.buffers, self.shapes = precision, {}, {}, {}
        self._arena, self._arena_used, self._arena_faulting = None, 0, None
        self._pending, self._pending_bytes, self._pending_outs, self._slabs = [], 0, set(), []
        self._pending_ew, self._pending_sm = [], []
        self._folded, self._fold_after, self._fold_next, self._expected = {}, {}, {}, None
        self._fold_bufs = [np.empty(0, np.float32), np.empty(0, np.float32)]
        return self

    def _setup(self, graph: WorkloadGraph) -> None:
        self.precision = graph.precision
        self.seq = graph.seq
        self.context = 0
        if not hasattr(self, "store"):
            self.store: dict[str, np.ndarray] = {}
            self._weights: set[str] = set()  # store keys of parameters (kept across passes)
        self.buffers: dict[str, np.ndarray] = {}
        self._arena: np.ndarray | None = None  # this pass's outputs (see _new_tensor)
        self._arena_used = 0
        self._arena_faulting: threading.Thread | None = None  # faulting the arena's pages in (see _reserve_arena)
        self._pending: list[MatmulBlock] = []  # queued products (see flush)
        self._pending_bytes = 0  # their size in fp32 (an upper bound: refs are clamped to their tensors)
        self._pending_outs: set[str] = set()  # the buffers they write
        self._pending_ew: list[Elementwise] = []  # a queued run of per-element actions (see _run_elementwise)
        self._pending_sm: list[SoftmaxBlock] = []  # queued softmaxes (see _run_softmax); one queue at a time
        self._folded: dict[str, list[str]] = {}  # partial sum -> the later terms of its group already added in
        if not hasattr(self, "_fold_after"):
            self._fold_after: dict[str, str] = {}  # see expect
            self._fold_next: dict[str, str] = {}
            self._expected: ModelPlan | None = None
        if not hasattr(self, "_slabs"):
            self._slabs: list[np.ndarray] = []  # product buffers of flushes, kept across passes (see _slab)
            self._fold_bufs = [np.empty(0, np.float32), np.empty(0, np.float32)]  # see _reduce_write
        self.shapes: dict[str, tuple[int, int]] = {
            op.name: (op.m, op.n) for op in graph.ops() if op.kind not in (OpKind.ATTN_SCORES, OpKind.SOFTMAX)
        }

    def _put(self, name: str, arr: np.ndarray, adopt: bool = False) -> None:
        """Store ``arr`` rounded to the storage precision: a rounded copy, or with ``adopt`` (a writeable
        C-contiguous float32 array the caller gives away) ``arr`` itself, rounded in place."""
        arr = arr[None, :] if arr.ndim == 1 else arr
        if adopt and arr.dtype == np.float32 and arr.flags.c_contiguous and arr.flags.writeable:
            round_in_place(arr, self.precision)
            self.store[name] = arr
            return
        self.store[name] = round_to(np.ascontiguousarray(arr, dtype=np.float32), self.precision)

    def _load_weights(self, w: ModelWeights, adopt: bool = False) -> None:
        for layer, lw in enumerate(w.layers):
            for f in fields(lw):
                if getattr(lw, f.name) is not None:
                    self._put(f"layer{layer}.{f.name}", getattr(lw, f.name), adopt)
        self._put("embed.wte", w.wte, adopt)
        if w.wpe is not None:
            self._put("embed.wpe", w.wpe, adopt)
        if w.lm_head is None:
            self.store["head.wte"] = self.store["embed.wte"]
        else:
            self._put("head.wte", w.lm_head, adopt)
        self._put("head.lnf_g", w.lnf_g, adopt)
        if w.lnf_b is not None:
            self._put("head.lnf_b", w.lnf_b, adopt)
        self._weights = set(self.store)

    def stored_weights(self, w: ModelWeights) -> ModelWeights:
        """``w`` (the weights this executor was loaded with) as the store holds them, rounded to the storage
        precision: the exact values the simulated pass computed with, without a copy (the checks compare the
        references on them instead of rounding every weight again)."""
        def held(name: str, like: np.ndarray | None) -> np.ndarray | None:
            return None if like is None else self.store[name].reshape(like.shape)

        layers = tuple(type(lw)(**{f.name: held(f"layer{i}.{f.name}", getattr(lw, f.name)) for f in fields(lw)})
                       for i, lw in enumerate(w.layers))
        return replace(w, wte=held("embed.wte", w.wte), wpe=held("embed.wpe", w.wpe), layers=layers,
                       lnf_g=held("head.lnf_g", w.lnf_g), lnf_b=held("head.lnf_b", w.lnf_b),
                       lm_head=held("head.wte", w.lm_head))

    # ---- tensor access -----------------------------------------------------------------------------------------
    def get(self, ref: Ref) -> np.ndarray:
        t = self.store[ref.tensor]
        (r0, r1), (c0, c1) = ref.rows, ref.cols
        return t[c0:c1, r0:r1].T if ref.transpose else t[r0:r1, c0:c1]

    def write(self, ref: Ref, value: np.ndarray) -> None:
        """Store ``value`` into the block ``ref``, rounded to the storage precision. A float32 value (or any
        float in fp32, where storing it is the one RNE) is copied in and rounded where it lies, without the
        temporary that ``round_to`` makes; float64 goes through ``round_to`` (one rounding, not two)."""
        dst = self._target(ref)
        if value.dtype == np.float32 or (self.precision == "fp32" and value.dtype == np.float64):
            dst[...] = value
            round_in_place(dst, self.precision)
        else:
            dst[...] = round_to(value, self.precision)

    def _target(self, ref: Ref) -> np.ndarray:
        """The block of the store that ``ref`` names, as a writeable view (the tensor made on first write)."""
        t = self.store.get(ref.tensor)
        if t is None:
            t = self.store[ref.tensor] = self._new_tensor(self.shapes[ref.tensor])
        (r0, r1), (c0, c1) = ref.rows, ref.cols
        return t[r0:r1, c0:c1]

    def _new_tensor(self, shape: tuple[int, int]) -> np.ndarray:
        """A zeroed float32 tensor for one output of this pass, carved from the pass's arena.

        The arena is one allocation with room for every output (:meth:`_arena_room`; the first pass's is made
        with the executor, see :meth:`_reserve_arena`, a later pass's at its first write). Its pages come
        zeroed from the OS and, being one large array, as 2 MiB pages (numpy asks for transparent huge pages
        above 4 MiB): the 111M fp32 forward's 430 MB of outputs were 100,000 faults of 4 KiB pages, 0.3-0.5
        CPU s, as separate arrays of 1.5-6 MB. They are faulted in at once when the arena is made (see
        :func:`_prefaulted`; the first pass's on a helper thread, waited for here). A tensor that does not fit
        (a shape added after) gets its own array."""
        size = shape[0] * shape[1]
        if self._arena is None:
            self._arena, self._arena_used = _prefaulted(np.zeros(self._arena_room(), dtype=np.float32)), 0
        if self._arena_faulting is not None:
            self._arena_faulting.join()
            self._arena_faulting = None
        start = self._arena_used
        if start + size > self._arena.shape[0]:
            return np.zeros(shape, dtype=np.float32)
        self._arena_used = start + _aligned(size)
        return self._arena[start:start + size].reshape(shape)

    def _arena_room(self) -> int:
        """Elements of this pass's arena: every output's shape not yet in the store (the weights, and the KV
        caches, which :meth:`fill_cache` makes), each rounded up to whole cache lines."""
        return sum(_aligned(r * c) for name, (r, c) in self.shapes.items()
                   if name not in self.store and "_cache#" not in name)

    def _reserve_arena(self) -> None:
        """Make the first pass's arena now and fault its pages in on a helper thread, while this thread goes on
        (the engine plans the pass before its first write): the first touch of new memory is system time, 0.3 to
        1.9 s for the 111M fp16 forward's 380 MB on the machine of benchmarks/README.md, which the main thread
        otherwise spends itself. numpy's strided assignment releases the GIL; the first write waits for it."""
        self._arena, self._arena_used = np.zeros(self._arena_room(), dtype=np.float32), 0
        self._arena_faulting = threading.Thread(target=_prefaulted, args=(self._arena,), name="wse-sim-arena",
                                                daemon=True)
        self._arena_faulting.start()

    def _rounded(self, value: np.ndarray) -> np.ndarray:
        """``value`` rounded to the storage precision; in fp32 a float array as it is (storing it into a
        float32 tensor, or keeping it, is the same single RNE that ``round_to`` would make, without its copy)."""
        if self.precision == "fp32" and value.dtype in (np.float32, np.float64):
            return value
        return round_to(value, self.precision)

    def output(self, name: str) -> np.ndarray:
        self.flush()
        return self.store[name]

    # ---- actions ---------------------------------------------------------------------------------------------
    def expect(self, plan: ModelPlan) -> None:
        """Learn the plan of the coming pass: which partial sums its reductions add one after another
        (:func:`_fold_links`), so that a flush holding both can chain the add into the GEMM kernel."""
        if plan is not self._expected:
            self._expected = plan
            self._fold_after = _fold_links(plan) if self.precision == "fp32" else {}
            self._fold_next = {prev: key for key, prev in self._fold_after.items()}

    def run(self, actions: tuple) -> None:
        for a in actions:
            if isinstance(a, MatmulBlock):
                if self._pending_ew or self._pending_sm:
                    self.flush()
                self._pending.append(a)
                added = a.accumulate and a.scale == 1.0 and (a.out in self._pending_outs or a.out in self.buffers)
                if not (added or self._fold_after.get(a.out) in self._pending_outs):
                    self._pending_bytes += 4 * (a.a.rows[1] - a.a.rows[0]) * (a.b.cols[1] - a.b.cols[0])
                self._pending_outs.add(a.out)
                if len(self._pending) >= self.max_pending_blocks or self._pending_bytes >= self.max_pending_bytes:
                    self.flush()
                continue
            if isinstance(a, Elementwise) and a.fn in PER_ELEMENT:
                if self._pending or self._pending_sm or (self._pending_ew and not _same_run(self._pending_ew[0], a)):
                    self.flush()
                self._pending_ew.append(a)
                continue
            if isinstance(a, SoftmaxBlock):  # queued too: the softmaxes of one step run as one kernel call
                if self._pending or self._pending_ew:
                    self.flush()
                self._pending_sm.append(a)
                continue
            if self._pending or self._pending_ew or self._pending_sm:
                self.flush()
            if isinstance(a, ReduceWrite):
                self._reduce_write(a)
            elif isinstance(a, Combine):
                self.buffers[a.out] = _fold([self.buffers[a.keys[0]], *(self.buffers.pop(k) for k in a.keys[1:])])
            elif isinstance(a, Elementwise):
                self.write(a.dst, self._elementwise(a))
            elif isinstance(a, ContextWrite):
                self.write(a.dst, gemm(self.buffers[a.probs], self.get(a.v)))
            elif isinstance(a, Rope):
                src = np.ascontiguousarray(self.get(a.src))
                positions = a.pos0 + np.arange(src.shape[0], dtype=np.int64)
                self.write(a.dst, rope(src, positions, self.head_dim, self.theta, self.rope_scaling))
            elif isinstance(a, DecodeAttnPartial):
                self.buffers[a.buf] = self._attend(a)
            elif isinstance(a, DecodeAttnCombine):
                self.write(a.dst, self._combine(a.bufs))
            elif isinstance(a, Free):
                for key in a.keys:
                    self.buffers.pop(key, None)
            else:  # pragma: no cover - a new action type without an interpreter is a programming error
                raise TypeError(f"no interpreter for action {type(a).__name__}")

    def _reduce_write(self, a: ReduceWrite) -> None:
        """Fold ``a``'s groups and bias in their order, round to the storage precision and store the sum; terms
        the GEMM kernel already added into a group's first (:meth:`_fold_chains`) are not added again. With
        float32 partials of the block's shape, a group of one term is that term and longer groups are folded in
        place into two reused buffers (or the store block itself when it is contiguous): the same fp32 adds in
        the same order as :func:`_fold`,
        without a new array, and fresh pages, per partial sum (numpy's adds into a strided block of a wider
        tensor are about 3x slower than into a contiguous one, so a strided block is written once, at the end)."""
        groups = []
        for group in a.groups:
            done = len(self._folded.pop(group[0], ()))  # terms the GEMM kernel already added into group[0]
            groups.append([self.buffers[key] for key in (group[0], *group[1 + done:])])
        bias = None if a.bias is None else self.get(a.bias)
        dst = self._target(a.dst)
        if not all(t.dtype == np.float32 and t.shape == dst.shape for group in groups for t in group):
            terms = [_fold(group) for group in groups] + ([] if bias is None else [bias])
            dst[...] = self._rounded(_fold(terms))
            return
        if len(groups) == 1 and len(groups[0]) == 1 and bias is None:  # one term (a sum the kernel made): stored
            dst[...] = groups[0][0]
            round_in_place(dst, self.precision)
            return
        total = dst if dst.flags.c_contiguous else self._fold_buffer(0, dst.shape)
        first, rest = groups[0], groups[1:]
        if len(first) == 1 and rest:  # a group of one term is its own sum: no copy of it
            np.add(first[0], self._group_sum(rest[0]), out=total)
            rest = rest[1:]
        else:
            _fold_into(total, first)
        for group in rest:
            np.add(total, self._group_sum(group), out=total)
        if bias is not None:
            np.add(total, bias, out=total)
        round_in_place(total, self.precision)
        if total is not dst:
            dst[...] = total

    def _group_sum(self, group: list[np.ndarray]) -> np.ndarray:
        """A group's left fold: its one term itself, or the sum in reused buffer 1 (see :meth:`_reduce_write`)."""
        if len(group) == 1:
            return group[0]
        part = self._fold_buffer(1, group[0].shape)
        _fold_into(part, group)
        return part

    def _fold_buffer(self, which: int, shape: tuple[int, int]) -> np.ndarray:
        """Reused float32 buffer ``which`` (0 or 1) of :meth:`_reduce_write`, as a contiguous ``shape`` array."""
        size = shape[0] * shape[1]
        if self._fold_bufs[which].shape[0] < size:
            self._fold_bufs[which] = np.empty(size, np.float32)
        return self._fold_bufs[which][:size].reshape(shape)

    def flush(self) -> None:
        """Run the queued actions: the ``MatmulBlock`` actions (multiplied in parallel where they share operand
        tensors, their results stored in queue order), the run of per-element actions (:meth:`_run_elementwise`)
        or the softmaxes (:meth:`_run_softmax`); one kind at a time is queued, so the actions keep their order."""
        if self._pending_ew:
            self._run_elementwise()
        if self._pending_sm:
            self._run_softmax()
        if not self._pending:
            return
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        self._pending_outs = set()
        products, fused = self._products(pending)
        for a, out, done in zip(pending, products, fused, strict=True):
            if done:  # already added into its buffer by the GEMM kernel
                continue
            if a.scale != 1.0:
                out *= np.float32(a.scale)
            if a.accumulate and a.out in self.buffers:
                self.buffers[a.out] += out
            else:
                if a.round_output:  # out is this flush's own product (a new array or a view of a free slab)
                    round_in_place(out, self.precision)
                self.buffers[a.out] = out

    def _products(self, blocks: list[MatmulBlock]) -> tuple[list[np.ndarray], list[bool]]:
        """``a @ b`` of every block, and whether it was already added into its buffer: blocks with the same two
        operand tensors go to :func:`gemm_blocks` together (which adds into buffers and chains the adds of
        later blocks, see :meth:`_links`), the rest (a group of one, an empty block, an operand not
        C-contiguous) to :func:`gemm`."""
        products: list[np.ndarray | None] = [None] * len(blocks)
        fused = [False] * len(blocks)
        specs = [self._block_spec(a) for a in blocks]
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (a, spec) in enumerate(zip(blocks, specs, strict=True)):
            if spec is not None:
                groups.setdefault((a.a.tensor, a.b.tensor), []).append(i)
        group_of = {i: key for key, members in groups.items() if len(members) > 1 for i in members}
        into, after, heads = self._links(blocks, specs, group_of)
        rank = self._fold_chains(blocks, specs, group_of, heads, after)
        for i, a in enumerate(blocks):
            if i not in group_of:
                products[i] = gemm(self.get(a.a), self.get(a.b))
        for (ta, tb), members in groups.items():
            if len(members) == 1:
                continue
            # A reduction's terms come after the block they are added into, in their group's order; every
            # other block keeps queue order (the accumulating chains' order).
            members = sorted(members, key=lambda i: rank.get(i, (0, i)))
            spec = np.array([specs[i] for i in members])
            local = {i: pos for pos, i in enumerate(members)}
            targets = [into[i] for i in members]
            links = [local[after[i]] if after[i] >= 0 else -1 for i in members]
            slab = self._slab(slab_room(spec, targets, links))
            outs = gemm_blocks(self.store[ta], self.store[tb], spec, slab, targets, links)
            del slab  # the views in outs hold it; the pool sees it as in use until they are gone
            for i, out in zip(members, outs, strict=True):
                products[i], fused[i] = out, into[i] is not None or after[i] >= 0
        return products, fused

    def _links(self, blocks: list[MatmulBlock], specs: list[tuple | None], group_of: dict[int, tuple[str, str]]
               ) -> tuple[list[np.ndarray | None], list[int], dict[str, int]]:
        """Per block, the buffer the GEMM kernel adds its product into (``into``), or the earlier block of the
        same :func:`gemm_blocks` call whose result it adds into (``after``, -1 for none); and the blocks whose
        unscaled, unrounded product becomes a new buffer (by buffer: where :meth:`_fold_chains` may start).

        A buffer's adds in this flush must keep queue order, and :meth:`flush` makes the rest after every kernel
        has run, so the kernel takes only a prefix of each buffer's blocks: from its head (the first block that
        adds into an existing buffer, or a block whose unscaled product becomes the buffer) through the
        accumulating, unscaled blocks of the same call and shape that follow; the first that does not fit ends
        the prefix for good. A head's product is rounded before the adds only outside fp32 (where rounding is the
        identity), so there a rounded head starts no chain."""
        into: list[np.ndarray | None] = [None] * len(blocks)
        after = [-1] * len(blocks)
        head: dict[str, int | None] = {}  # buffer -> block whose result the next block may add into (None: no more)
        for i, a in enumerate(blocks):
            key, shape = group_of.get(i), None if specs[i] is None else (specs[i][6], specs[i][8])
            plain = a.scale == 1.0 and key is not None
            h = head.get(a.out, -1)
            if a.accumulate and h is not None and h >= 0:
                if plain and group_of[h] == key and (specs[h][6], specs[h][8]) == shape:
                    after[i] = h
                else:
                    head[a.out] = None
            elif a.accumulate and h == -1 and a.out in self.buffers:
                buf = self.buffers[a.out]
                ok = plain and buf.dtype == np.float32 and buf.flags.c_contiguous and buf.flags.writeable
                if ok and buf.shape == shape:
                    into[i], head[a.out] = buf, i
                else:
                    head[a.out] = None
            elif h == -1 or not a.accumulate:
                rounded = a.round_output and self.precision != "fp32"
                head[a.out] = i if plain and not rounded else None
        heads = {a.out: i for i, a in enumerate(blocks) if not a.accumulate and head.get(a.out) == i}
        return into, after, heads

    def _fold_chains(self, blocks: list[MatmulBlock], specs: list[tuple | None],
                     group_of: dict[int, tuple[str, str]], heads: dict[str, int], after: list[int]
                     ) -> dict[int, tuple[int, int]]:
        """Chain a reduction's leading terms (:meth:`expect`) written in this flush onto the block of its first
        term: ``after[j] = r`` for each, in the group's order, while they are products of the same call and shape.
        The reduction then finds those terms already added (``_folded``). Returns ``{j: (r, rank)}``, the order
        the chained blocks must have in their call."""
        rank: dict[int, tuple[int, int]] = {}
        for key, r in heads.items():
            if key not in self._fold_next or key in self._fold_after:  # chains start at a group's first term
                continue
            folded, nxt = [], self._fold_next.get(key)
            while nxt is not None and (j := heads.get(nxt)) is not None and after[j] < 0 and \
                    group_of[j] == group_of[r] and (specs[j][6], specs[j][8]) == (specs[r][6], specs[r][8]):
                after[j], rank[j] = r, (r, len(blocks) + len(folded))
                folded.append(nxt)
                nxt = self._fold_next.get(nxt)
            if folded:
                self._folded[key] = folded
        return rank


    def _slab(self, size: int) -> np.ndarray:
        """A float32 buffer of at least ``size`` elements that nothing else uses, for one product group.

        Products stay in the buffers (as views of their slab) until the reductions that read them are done, so
        a slab is free again once no view of it is left: its reference count says so (the pool's list, the loop
        variable and ``getrefcount``'s argument). Reusing slabs instead of allocating a fresh one per flush spares
        the page faults of new memory (the allocator hands large freed blocks back to the OS): on the 111M fp32
        forward about 50,000 faults per pass, 0.2-0.3 CPU s."""
        for slab in self._slabs:
            if slab.shape[0] >= size and sys.getrefcount(slab) == 3:
                return slab
        slab = _prefaulted(np.empty(max(size, (self.max_pending_bytes + SLAB_SLACK_BYTES) // 4), np.float32))
        self._slabs.append(slab)
        return slab

    def _block_spec(self, a: MatmulBlock) -> tuple | None:
        """``(a_off, a_s0, a_s1, b_off, b_s0, b_s1, m, k, n)`` of the block in its operands' flat storage, or
        None when :func:`gemm_blocks` cannot take it."""
        ra, rb = self._operand(a.a), self._operand(a.b)
        if ra is None or rb is None or ra[4] != rb[3]:
            return None
        return ra[0], ra[1], ra[2], rb[0], rb[1], rb[2], ra[3], ra[4], rb[4]

    def _operand(self, ref: Ref) -> tuple | None:
        """``(offset, s0, s1, rows, cols)`` of ``get(ref)`` in the flat C-contiguous store tensor (same clamping
        as numpy's slicing), or None when it is empty or the tensor is not a C-contiguous float32 array."""
        t = self.store[ref.tensor]
        if t.ndim != 2 or t.dtype != np.float32 or not t.flags.c_contiguous:
            return None
        (r0, r1), (c0, c1) = ref.rows, ref.cols
        h, w = t.shape if not ref.transpose else t.shape[::-1]  # get() = t[c0:c1, r0:r1].T when transposed
        r0, r1, c0, c1 = min(r0, h), min(r1, h), min(c0, w), min(c1, w)
        rows, cols = r1 - r0, c1 - c0
        if rows < 1 or cols < 1:
            return None
        width = t.shape[1]
        if ref.transpose:
            return c0 * width + r0, 1, width, rows, cols
        return r0 * width + c0, width, 1, rows, cols

    def _attend(self, a: DecodeAttnPartial) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(max, sum of exp, exp-weighted V sum) of one query over the cache rows of one tile, in fp32."""
        scores = gemm(np.ascontiguousarray(self.get(a.q)), np.ascontiguousarray(self.get(a.k).T))
        scores *= np.float32(a.scale)
        scores = self._rounded(scores)  # scores are stored, as in prefill
        peak = scores.max(axis=1, keepdims=True)
        e = np.exp(scores - peak, dtype=np.float32)
        return peak, e.sum(axis=1, keepdims=True, dtype=np.float32), gemm(e, np.ascontiguousarray(self.get(a.v)))

    def _combine(self, bufs: tuple[str, ...]) -> np.ndarray:
        peak, total, acc = self.buffers.pop(bufs[0])
        for key in bufs[1:]:
            m2, s2, o2 = self.buffers.pop(key)
            new = np.maximum(peak, m2)
            r1, r2 = np.exp(peak - new, dtype=np.float32), np.exp(m2 - new, dtype=np.float32)
            peak, total, acc = new, total * r1 + s2 * r2, acc * r1 + o2 * r2
        return acc / total

    def _run_softmax(self) -> None:
        """The queued ``SoftmaxBlock`` actions, as one :func:`causal_softmax_many` call; each probability block
        (a new array) is rounded in place and replaces its scores."""
        batch, self._pending_sm = self._pending_sm, []
        probs = causal_softmax_many([(self.buffers[a.buf], a.q_offset) for a in batch], 1.0)
        for a, p in zip(batch, probs, strict=True):
            round_in_place(p, self.precision)
            self.buffers[a.buf] = p

    def _run_elementwise(self) -> None:
        """The queued run of per-element actions (one function, the same tensors; see :data:`PER_ELEMENT`): when
        their blocks tile the whole output, and each reads the same block of its inputs, as one action on the
        whole tensors (one kernel call: the GELU of a layer is 64 tiles' blocks), else one by one. Either way each
        element is the same scalar function of the same inputs, so the bits do not change."""
        batch, self._pending_ew = self._pending_ew, []
        whole = self._whole(batch)
        for a in batch if whole is None else (whole,):
            self.write(a.dst, self._elementwise(a))

    def _whole(self, batch: list[Elementwise]) -> Elementwise | None:
        """``batch`` as one action on whole tensors, or None when its blocks do not tile the output exactly (each
        block once, the rows and columns a grid of spans) or an input block differs from its output block."""
        first = batch[0]
        shape = self.shapes.get(first.dst.tensor)
        if len(batch) < 2 or shape is None or any(self.store[s.tensor].shape != shape for s in first.srcs):
            return None
        rows, cols, blocks = set(), set(), set()
        for a in batch:
            if a.dst.transpose or any(s.transpose or (s.rows, s.cols) != (a.dst.rows, a.dst.cols) for s in a.srcs):
                return None
            rows.add(a.dst.rows)
            cols.add(a.dst.cols)
            blocks.add((a.dst.rows, a.dst.cols))
        if len(blocks) != len(batch) or len(blocks) != len(rows) * len(cols) or not (
                _partition(rows, shape[0]) and _partition(cols, shape[1])):
            return None
        span = ((0, shape[0]), (0, shape[1]))
        return replace(first, dst=Ref(first.dst.tensor, *span), srcs=tuple(Ref(s.tensor, *span) for s in first.srcs))

    def _elementwise(self, a: Elementwise) -> np.ndarray:
        if a.fn == "layernorm":
            gamma, beta = (self.get(p)[0] for p in a.params)
            return layernorm(np.ascontiguousarray(self.get(a.srcs[0])), gamma, beta, self.eps)
        if a.fn == "rmsnorm":
            return rmsnorm(np.ascontiguousarray(self.get(a.srcs[0])), self.get(a.params[0])[0], self.eps)
        if a.fn == "gelu":
            return gelu(np.ascontiguousarray(self.get(a.srcs[0])), self.activation)
        if a.fn == "swiglu":
            return silu_gate(np.ascontiguousarray(self.get(a.srcs[0])), np.ascontiguousarray(self.get(a.srcs[1])))
        if a.fn == "add":
            return self.get(a.srcs[0]) + self.get(a.srcs[1])
        if a.fn == "copy":
            return self.get(a.srcs[0])
        if a.fn == "embedding":
            (m0, m1), (c0, c1) = a.dst.rows, a.dst.cols
            wte = self.store["embed.wte"][:, c0:c1]
            wpe = self.store["embed.wpe"][:, c0:c1] if "embed.wpe" in self.store else None
            parts = []
            flat = self.token_ids.reshape(-1)
            row = m0
            while row < m1:  # one piece per sequence the row block overlaps
                s0 = row % self.seq
                end = min(m1, row - s0 + self.seq)
                if wpe is None:  # rotary models: no position rows
                    parts.append(np.ascontiguousarray(wte[flat[row:end]]))
                else:
                    parts.append(embedding(flat[row:end][None, :], wte, wpe, self.context + s0))
                row = end
            if not parts:  # a tile row with no tokens (fewer tokens than tile rows)
                return np.zeros((0, c1 - c0), dtype=np.float32)
            return np.concatenate(parts, axis=0)
        raise ValueError(f"unknown elementwise function {a.fn!r}")


def run_matmul_plan(op_plan: OpPlan, precision: str, a: np.ndarray, b: np.ndarray,
                    bias: np.ndarray | None = None) -> np.ndarray:
    """Run one matmul op's plan on real operands ``a [m, k]`` and ``b [k, n]`` (and ``bias [n]`` when the plan
    adds one): every tile's block product (:class:`MatmulBlock`) and every reduction (:class:`ReduceWrite`, which
    adds the bias) in the plan's order, operands and the result rounded to ``precision``; returns ``[m, n]``.

    Tasks run in list order, a topological order of the op's DAG; the result does not depend on which one, since
    every partial sum has its own buffer and each reduction fixes its order. This is how training's weight
    matmuls (the backward graph's ``dgrad`` and ``wgrad`` ops) follow the mapping outside a full engine run.
    """
    blocks = [x for t in op_plan.tasks for x in t.actions if isinstance(x, MatmulBlock)]
    writes = [x for t in op_plan.tasks for x in t.actions if isinstance(x, ReduceWrite)]
    if not blocks or not writes or (writes[0].bias is None) != (bias is None):
        raise ValueError(f"{op_plan.op.name}: not a matmul plan {'with' if bias is not None else 'without'} a bias")
    ex = Numerics.bare(precision)
    for ref, arr in ((blocks[0].a, a), (blocks[0].b, b)):
        ex._put(ref.tensor, arr.T if ref.transpose else arr)
    if bias is not None:
        ex._put(writes[0].bias.tensor, bias)
    out = writes[0].dst.tensor
    ex.shapes = {out: (a.shape[0], b.shape[1])}
    for t in op_plan.tasks:
        if t.actions:
            ex.run(t.actions)
    return ex.output(out)


def _fold_into(out: np.ndarray, terms: list[np.ndarray]) -> None:
    """``out = ((t0 + t1) + t2) + ...`` in place, one fp32 rounding per add (float32 terms of ``out``'s shape)."""
    if len(terms) == 1:
        np.copyto(out, terms[0])
        return
    np.add(terms[0], terms[1], out=out)
    for t in terms[2:]:
        np.add(out, t, out=out)


def _prefaulted(arr: np.ndarray) -> np.ndarray:
    """``arr`` (new, 1-D) after writing a zero into each of its 4 KiB pages, which makes the OS map them all
    now, in one sweep, rather than one by one as the actions first touch them (interleaved with the work, the
    faults and page clearing cost more: on the 111M fp32 forward the pass took 0.25-0.3 CPU s less with its
    arena faulted in first, which itself took 0.04-0.08 s). The values written are the zeros ``np.zeros`` has
    (and ``np.empty``'s are undefined anyway)."""
    arr[::1024] = 0.0
    return arr


def _aligned(size: int) -> int:
    """``size`` elements rounded up to whole 64-byte cache lines (16 float32), where the next arena tensor starts."""
    return -(-size // 16) * 16


def _fold(terms: list[np.ndarray]) -> np.ndarray:
    """``((t0 + t1) + t2) + ...`` in fp32, one rounding per add as the mapping orders them; the sum is one new
    array (added into in place: no allocation and page faults per term), or ``t0`` itself when alone."""
    if len(terms) == 1:
        return terms[0]
    total = np.add(terms[0], terms[1])
    for t in terms[2:]:
        if t.dtype == total.dtype and t.shape[0] <= total.shape[0] and t.shape[1] <= total.shape[1]:
            np.add(total, t, out=total)
        else:  # a wider type or shape: the sum takes it, as ``total + t`` does
            total = total + t
    return total


def _same_run(first: Elementwise, a: Elementwise) -> bool:
    """Whether ``a`` may join the queued run that ``first`` began: the same function on the same tensors."""
    return (a.fn == first.fn and a.dst.tensor == first.dst.tensor
            and tuple(s.tensor for s in a.srcs) == tuple(s.tensor for s in first.srcs))


def _partition(spans: set[tuple[int, int]], extent: int) -> bool:
    """Whether ``spans`` cut ``[0, extent)`` into consecutive, non-overlapping pieces."""
    end = 0
    for lo, hi in sorted(spans):
        if lo != end or hi <= lo:
            return False
        end = hi
    return end == extent


def _fold_links(plan: ModelPlan) -> dict[str, str]:
    """``{partial sum: the partial sum its reduction adds it to}`` for the leading terms of each
    :class:`ReduceWrite` group written once, by an unscaled, non-accumulating block, and read by that reduction
    alone (:class:`Free` aside): a flush that holds the blocks of a group's first terms may add each product
    into the first one's result as the GEMM kernel stores it, the group's own left fold."""
    writes: dict[str, int] = {}
    plain: set[str] = set()
    reads: dict[str, int] = {}
    groups: list[tuple[str, ...]] = []
    for op in plan.ops:
        for task in op.tasks:
            for a in task.actions:
                if isinstance(a, MatmulBlock):
                    writes[a.out] = writes.get(a.out, 0) + 1
                    if not a.accumulate and a.scale == 1.0:
                        plain.add(a.out)
                elif isinstance(a, ReduceWrite):
                    for group in a.groups:
                        for key in group:
                            reads[key] = reads.get(key, 0) + 1
                        groups.append(group)
                elif not isinstance(a, Free):
                    for key in _buffers_read(a):
                        reads[key] = reads.get(key, 0) + 2  # read elsewhere: never chained
    after: dict[str, str] = {}
    for group in groups:  # links run from the group's first term while every term qualifies
        for prev, key in pairwise(group):
            if not all(writes.get(k) == 1 and k in plain and reads.get(k) == 1 for k in (prev, key)):
                break
            after[key] = prev
    return after


def _buffers_read(a) -> tuple[str, ...]:
    """The buffers an action other than a MatmulBlock, ReduceWrite or Free reads or writes."""
    if isinstance(a, Combine):
        return (a.out, *a.keys)
    if isinstance(a, SoftmaxBlock | DecodeAttnPartial):
        return (a.buf,)
    if isinstance(a, ContextWrite):
        return (a.probs,)
    if isinstance(a, DecodeAttnCombine):
        return tuple(a.bufs)
    return ()
