"""Rule-based schedules (no search) for the fused functions that contain qcc's int8 kernels.

After LegalizeOps / FuseOps / FuseTIR a fused function is: [pad] -> kernel block (kernels.py) ->
elementwise epilogue (bias, float32 requantize, clamp, cast; slices) -> output. Each rule:

- inlines the epilogue into one block and computes it per output tile, right after the tile's
  reduction, so the int32 accumulator tile never leaves the cache (requantize fused);
- runs the outer tile loop in parallel (TVM's thread pool, TVM_NUM_THREADS);
- conv / dense: tiles output pixels x 16-channel blocks (7 x 2 blocks: 14 zmm accumulators),
  keeps the accumulator tile in a small buffer LLVM holds in registers and tensorizes the
  (16 output channels x 4 input channels) tile with vpdpbusd;
- depthwise: vectorizes over 16-channel blocks with the taps unrolled and the zero padding
  inlined as selects;
- TVM's own matmul block (attention's activation x activation products): reduction outside a
  16-lane output vector and a 4-row tile.

Row-wise functions (softmax, layer norm: reductions over the innermost axis only) run every block
inside one parallel loop over rows, elementwise blocks inlined. Functions without any of these get
a generic rule: the outermost spatial loops in parallel, the innermost loop vectorized when it is
elementwise (float fallback ops and layout copies).
A rule meets only functions whose structure it was written for; anything it cannot schedule
raises, and the caller keeps TVM's default code for that function.
"""

from __future__ import annotations

from tvm import s_tir, tirx

from .. import compat

from .intrin import VNNI_16x4, VNNI_LANEWISE_16x4
from .kernels import CONV_BLOCK, DENSE_BLOCK, DW_BLOCK, DW_VNNI_BLOCK, PAD_BLOCK

# The accumulator tile lives in a small "global"-scope buffer allocated inside the parallel loop (a
# stack array LLVM keeps in zmm registers); TVM 0.27 allocates "local" buffers through
# TVMBackendAllocWorkspace on every iteration instead.
ACC_SCOPE = "global"
MATMUL_BLOCK = "matmul"   # the block name of TVM's legalized R.matmul


def _has_block(sch, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except Exception:  # noqa: BLE001 - s_tir raises a ScheduleError (a TVMError) for a missing block
        return False


def _extent(sch, loop) -> int | None:
    """A loop's trip count, None where symbolic (a dynamic batch, sequence length or image size)."""
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _divisor(n: int | None, limit: int) -> int:
    """The largest tile <= limit dividing n; `limit` for a symbolic n (the split then has a tail)."""
    if n is None:
        return limit
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


def _divides(sch, loop, tile: int) -> bool:
    """`tile` provably divides the loop's extent. Where it does not (a symbolic extent), splitting by it
    puts a bounds predicate on the kernel block, and TVM cannot tensorize a block under a predicate:
    the VNNI rules then tile by 1 along that loop (the AVX2 rules, not tensorized, keep the predicate)."""
    return tile == 1 or compat.prove_equal(sch.get(loop).extent % tile, 0)


def _inline_epilogue(sch, kernel):
    """Inline every elementwise block of the function except the kernel, its pad and the block
    writing the output, so the whole epilogue (requantize, residual add, clamp, cast, slice) is one
    block; returns it (None when the kernel itself writes the output)."""
    root = sch.get_sblock("root")
    outputs = sch.get_output_blocks(root)
    out_names = {sch.get(b).name_hint for b in outputs}
    kname = sch.get(kernel).name_hint
    if kname in out_names:
        return None
    for b in sch.get_child_blocks(root):
        name = sch.get(b).name_hint
        if name in out_names or name in (kname, PAD_BLOCK):
            continue
        sch.compute_inline(b)
    return outputs[0] if len(outputs) == 1 else None


def _schedule_pad(sch):
    if _has_block(sch, PAD_BLOCK):
        pad = sch.get_sblock(PAD_BLOCK)
        loops = sch.get_loops(pad)
        sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
        _vectorize_inner(sch, pad)


def _vectorize_inner(sch, block, lanes=16):
    inner = sch.get_loops(block)[-1]
    ext = _extent(sch, inner)
    if ext is None:     # a symbolic innermost extent: scalar code
        return
    if ext % lanes == 0 and ext > lanes:
        _, inner = sch.split(inner, [None, lanes])
    if ext % lanes == 0 or ext <= 4 * lanes:
        sch.vectorize(inner)


def _kmajor(sch, block) -> bool:
    """The block reads its packed weight in the AVX2 k-major layout ([.., 4, 16])."""
    for r in sch.get(block).reads:
        buf = r.source if hasattr(r, "source") else r.buffer
        if str(buf.dtype) == "int8" and len(buf.shape) >= 4:
            return int(buf.shape[-1]) == 16 and int(buf.shape[-2]) == 4
    return False


def _packed_tile(sch, block, acc, epi, outer_loops, red_loops, pi, ci, lanes, r4, kmajor: bool) -> None:
    """Shared by conv and dense: tile loops (outer_loops) fused and parallel, the reductions
    (red_loops) around a pixel x channel-block tile (pi, ci) of 16 lanes x 4 reduction steps (r4),
    accumulators in registers, the epilogue fused per tile. The 16 x 4 step is one vpdpbusd (VNNI),
    or without VNNI 4 unrolled 16-lane int32 multiply-adds of 8-bit operands (vpmaddwd) over k-major
    weights, set up before the reduction is decomposed."""
    sch.reorder(*outer_loops, *red_loops, pi, ci, lanes, r4)
    outer = sch.fuse(*outer_loops)
    sch.parallel(outer)
    sch.reverse_compute_at(acc, outer)
    if kmajor:
        sch.reorder(r4, lanes)
        sch.unroll(r4)
        sch.vectorize(lanes)
    init = sch.decompose_reduction(block, red_loops[0])
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(pi)
    sch.unroll(ci)
    if not kmajor:
        sch.tensorize(lanes, VNNI_16x4)
    _fuse_epilogue(sch, outer, acc, epi)


def schedule_conv(sch, wt_max=None, cbt_max=None):
    conv = sch.get_sblock(CONV_BLOCK)
    kmajor = _kmajor(sch, conv)
    epi = _inline_epilogue(sch, conv)
    acc = sch.cache_write(conv, 0, ACC_SCOPE)
    n, h, w, o, rh, rw, rc = sch.get_loops(conv)
    if wt_max is None:
        # few input channels: a short reduction per tile, so a longer pixel run (14 x 1 blocks)
        # amortizes the tile's epilogue and loop overhead better than 7 x 2 (measured on MobileNetV2);
        # AVX2: 7 pixels x one 16-lane block (14 of the 16 ymm registers)
        wt_max, cbt_max = (7, 1) if kmajor else (14, 1) if _extent(sch, rc) <= 64 else (7, 2)
    wt = _divisor(_extent(sch, w), wt_max)
    if not kmajor and not _divides(sch, w, wt):
        wt, cbt_max = 1, 4      # a symbolic width: one pixel x 4 channel blocks (see _divides)
    cb = _extent(sch, o) // 16
    cbt = _divisor(cb, cbt_max)
    wo, wi = sch.split(w, [None, wt])
    ob, o16 = sch.split(o, [None, 16])
    obo, obi = sch.split(ob, [None, cbt])
    rcb, rc4 = sch.split(rc, [None, 4])
    _packed_tile(sch, conv, acc, epi, [n, h, wo, obo], [rh, rw, rcb], wi, obi, o16, rc4, kmajor)


def schedule_depthwise(sch, wt_max=None):
    dw = sch.get_sblock(DW_BLOCK)
    epi = _inline_epilogue(sch, dw)
    acc = sch.cache_write(dw, 0, ACC_SCOPE)
    n, h, w, c, rh, rw = sch.get_loops(dw)
    cext = _extent(sch, c)
    # 32-channel multiples: 2 x 16 lanes per pixel, taps unrolled; else one 16-lane vector and a
    # longer pixel run (measured best on MobileNetV2's 32 / 96 / 144-channel layers)
    lanes = 32 if cext % 32 == 0 else 16
    wt = _divisor(_extent(sch, w), wt_max or (7 if lanes == 32 else 14))
    wo, wi = sch.split(w, [None, wt])
    if lanes == 32:
        sch.unroll(rh)
        sch.unroll(rw)
    if cext % 16 == 0:
        cb, c16 = sch.split(c, [None, lanes])
        sch.reorder(n, h, wo, cb, rh, rw, wi, c16)
        outer = sch.fuse(n, h, wo, cb)
        vec = c16
    else:
        sch.reorder(n, h, wo, rh, rw, wi, c)
        outer = sch.fuse(n, h, wo)
        vec = c
    sch.parallel(outer)
    sch.reverse_compute_at(acc, outer)
    sch.unroll(wi)
    if cext % 16 == 0 or cext <= 16:
        sch.vectorize(vec)
    sch.decompose_reduction(dw, rh)   # the init loop inherits the vectorized channel loop
    _epilogue_at(sch, outer, acc, epi)
    if _has_block(sch, PAD_BLOCK):   # padded loads as selects: cheaper than a padded copy
        sch.compute_inline(sch.get_sblock(PAD_BLOCK))


def schedule_depthwise_vnni(sch, wt_max=7):
    """Output row x wt pixels x 64 channels per parallel tile; per lane slot r (4) the wt x 16-lane
    accumulators stay in registers over the taps, one lane-wise vpdpbusd per (tap, pixel). The
    padded input window of the tile is copied in its own loop (64 bytes per vector), so the
    tensorized loads carry no bounds checks."""
    dw = sch.get_sblock(DW_VNNI_BLOCK)
    epi = _inline_epilogue(sch, dw)
    acc = sch.cache_write(dw, 0, ACC_SCOPE)
    n, h, w, c, rh, rw, rb = sch.get_loops(dw)
    wt = _divisor(_extent(sch, w), wt_max)
    if not _divides(sch, w, wt):
        wt = 1
    wo, wi = sch.split(w, [None, wt])
    g, r, j = sch.split(c, [None, 4, 16])
    sch.reorder(n, h, wo, g, r, rh, rw, wi, j, rb)
    outer = sch.fuse(n, h, wo, g)
    sch.parallel(outer)
    if _has_block(sch, PAD_BLOCK):
        pad = sch.get_sblock(PAD_BLOCK)
        sch.compute_at(pad, outer)
        sch.vectorize(sch.get_loops(pad)[-1])
    # per lane slot r: its wt x 16 accumulators (registers, indices constant once wi is unrolled)
    # and their epilogue
    sch.reverse_compute_at(acc, r)
    init = sch.decompose_reduction(dw, rh)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(wi)
    sch.tensorize(j, VNNI_LANEWISE_16x4)
    _epilogue_at(sch, r, acc, epi)


def schedule_dense(sch, mt_max=None, nbt_max=None):
    d = sch.get_sblock(DENSE_BLOCK)
    kmajor = _kmajor(sch, d)
    if mt_max is None:
        mt_max, nbt_max = (4, 1) if kmajor else (4, 4)
    epi = _inline_epilogue(sch, d)
    acc = sch.cache_write(d, 0, ACC_SCOPE)
    *batch, m, n, rk = sch.get_loops(d)     # batch: kernels.batch_dense_packed
    mt = _divisor(_extent(sch, m), mt_max)
    if not kmajor and not _divides(sch, m, mt):
        mt = 1      # a symbolic row count not padded to the tile (kernels.padded_rows)
    n_ext = _extent(sch, n)    # symbolic: attention's run-time packed sequence axis
    nbt = _divisor(n_ext // 16, nbt_max) if n_ext is not None else 1
    mo, mi = sch.split(m, [None, mt])
    nbo, n16 = sch.split(n, [None, 16])
    nbo, nbi = sch.split(nbo, [None, nbt])
    rkb, rk4 = sch.split(rk, [None, 4])
    _packed_tile(sch, d, acc, epi, [*batch, mo, nbo], [rkb], mi, nbi, n16, rk4, kmajor)


def _epilogue_at(sch, loop, acc, epi) -> None:
    """The requantize epilogue (if fused) runs under `loop` (the tile) and reads the accumulator
    tile straight from its local buffer; vectorized over its innermost loop."""
    if epi is not None:
        sch.reverse_compute_at(epi, loop)
        sch.compute_inline(acc)
        _vectorize_inner(sch, epi)
    else:
        _vectorize_inner(sch, acc)


def _fuse_epilogue(sch, outer, acc, epi) -> None:
    """_epilogue_at the parallel tile, then the input padding is scheduled."""
    _epilogue_at(sch, outer, acc, epi)
    _schedule_pad(sch)


_VECTOR_DTYPES = {"int8", "uint8", "int16", "int32", "int64", "float32"}


def _vector_dtypes(block) -> bool:
    """Every buffer the block touches has a dtype LLVM vectorizes cleanly (not bool: TVM 0.27 emits
    an invalid bool-vector store)."""
    # TVM 0.27's block regions are TensorRegions: the buffer is `.source` (`.buffer` before)
    regions = list(block.reads) + list(block.writes)
    return all(str((r.source if hasattr(r, "source") else r.buffer).dtype) in _VECTOR_DTYPES for r in regions)


def schedule_generic(sch):
    """Any other function: each top-level loop nest parallel over its outer loops, the innermost
    loop vectorized when its block is spatial (elementwise / layout copies / float fallback)."""
    root = sch.get_sblock("root") if _has_block(sch, "root") else None
    blocks = sch.get_child_blocks(root) if root is not None else []
    for b in blocks:
        try:
            loops = sch.get_loops(b)
            if not loops:
                continue
            iters = sch.get(b).iter_vars
            spatial = all(int(iv.iter_type) == 0 for iv in iters)
            n_outer = 0
            total = 1
            for lp in loops:
                if total >= 64 or n_outer == len(loops) - 1:
                    break
                if int(iters[n_outer].iter_type) != 0 if n_outer < len(iters) else True:
                    break
                total *= _extent(sch, lp) or 64     # a symbolic extent: assume enough to split
                n_outer += 1
            inner = _extent(sch, loops[-1])
            if spatial and _vector_dtypes(sch.get(b)) and len(loops) > n_outer and inner and inner % 16 == 0:
                _, v = sch.split(loops[-1], [None, 16])
                sch.vectorize(v)
            if n_outer >= 1 and total >= 2:
                outer = sch.fuse(*loops[:n_outer]) if n_outer > 1 else loops[0]
                sch.parallel(outer)
        except Exception:  # noqa: BLE001, S112 - a loop nest this rule cannot handle stays serial
            continue


def schedule_rows(sch):
    """Row-wise functions (softmax, layer norm, their quantize: reductions over the innermost axis
    only): every block computed inside one parallel loop over the output's rows, the elementwise
    blocks inlined, so a row makes one pass through L1 and the function one parallel launch (not
    one per block, each over full-size intermediates)."""
    root = sch.get_sblock("root")
    outputs = sch.get_output_blocks(root)
    if len(outputs) != 1:
        raise ValueError("row rule: one output block")
    out = outputs[0]
    blocks = sch.get_child_blocks(root)
    reductions = [b for b in blocks if any(int(iv.iter_type) != 0 for iv in sch.get(b).iter_vars)]
    if not reductions:
        raise ValueError("row rule: no reduction")
    rows = [sch.get(lp).extent for lp in sch.get_loops(out)[:-1]]
    for b in reductions:   # a row reduction: its spatial domain is the output's rows, reduced over one axis
        ivs = sch.get(b).iter_vars
        spatial = [iv.dom.extent for iv in ivs if int(iv.iter_type) == 0]
        if len(spatial) != len(rows) or not all(compat.prove_equal(a, r) for a, r in zip(spatial, rows)) or \
                sum(int(iv.iter_type) != 0 for iv in ivs) != 1 or int(ivs[-1].iter_type) == 0:
            raise ValueError("row rule: not a reduction over the innermost axis")
    red_names = {sch.get(b).name_hint for b in reductions}
    for b in blocks:       # elementwise intermediates inline into elementwise consumers; one a
        name = sch.get(b).name_hint      # reduction reads (softmax's exp) stays a row buffer, computed once
        if name == sch.get(out).name_hint or name in red_names:
            continue
        if any(sch.get(c).name_hint in red_names for c in sch.get_consumers(b)):
            continue
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001, S112 - not inlinable: computed at the row
            continue
    *outer, last_row, _ = sch.get_loops(out)
    # rows in groups of `rt` (a split of the innermost row loop, so the block bindings stay affine):
    # each reduction runs its k loop outside the rt rows (unrolled), so rt independent accumulator
    # chains hide the float add latency while every row keeps its sequential summation order
    # (bit-identical to the one-row loop)
    rt = _divisor(_extent(sch, last_row), 8)
    ro, _ = sch.split(last_row, [None, rt])
    row = sch.fuse(*outer, ro) if outer else ro
    sch.parallel(row)
    for b in reversed(sch.get_child_blocks(root)):
        if sch.get(b).name_hint != sch.get(out).name_hint:
            sch.compute_at(b, row)
    for b in sch.get_child_blocks(root):
        if sch.get(b).name_hint in red_names:
            r, k = sch.get_loops(b)[-2:]
            sch.reorder(k, r)
            sch.decompose_reduction(b, k)
            sch.unroll(r)
        elif _vector_dtypes(sch.get(b)):
            _vectorize_inner(sch, b)


def schedule_matmul(sch, rows_max=4):
    """TVM's own (batch) matmul block, e.g. attention's activation x activation products:
    out[.., i, j] = sum_k a[.., i, k] * b[.., k, j]. The reduction moves outside a 16-lane j vector
    and a small row tile, so b is read contiguously and the int32 accumulators stay in registers.

    A symbolic j (QK^T's key axis at a dynamic sequence length) is split by 16 with a tail; the
    j-tile loop stays out of the parallel fusion and carries TVM's loop-partition hint, so the
    lowering peels the tail off and the full tiles vectorize without a per-lane predicate (scalar
    code otherwise: 114 ms -> 7 ms for 12 heads at 512 tokens on 2 AVX2 cores; a static 512 is 3 ms).
    The accumulator tile sits under the j-tile loop, so it keeps a constant 4 x 16 size."""
    mm = sch.get_sblock(MATMUL_BLOCK)
    epi = _inline_epilogue(sch, mm)
    acc = sch.cache_write(mm, 0, ACC_SCOPE)
    *sp, k = sch.get_loops(mm)
    if len(sp) < 2:
        raise ValueError("matmul with fewer than two spatial loops")
    i, j = sp[-2], sp[-1]
    jext = _extent(sch, j)
    symbolic = jext is None
    if symbolic or (jext % 16 == 0 and jext > 16):
        jo, ji = sch.split(j, [None, 16])
    else:
        jo, ji = None, j
    io, ii = sch.split(i, [None, _divisor(_extent(sch, i), rows_max)])
    order = list(sp[:-2]) + [io] + ([jo] if jo is not None else []) + [k, ii, ji]
    sch.reorder(*order)
    outer_loops = order[:order.index(k)]
    if symbolic:
        outer_loops = outer_loops[:-1]
        sch.annotate(jo, "pragma_loop_partition_hint", 1)
    outer = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
    sch.parallel(outer)
    tile = jo if symbolic else outer
    sch.reverse_compute_at(acc, tile)
    sch.unroll(ii)
    vector = symbolic or jext % 16 == 0 or jext <= 16
    if vector:
        sch.vectorize(ji)
    init = sch.decompose_reduction(mm, k)
    if vector:
        sch.vectorize(sch.get_loops(init)[-1])
    _epilogue_at(sch, tile, acc, epi)


RULES = ((CONV_BLOCK, schedule_conv), (DENSE_BLOCK, schedule_dense), (DW_BLOCK, schedule_depthwise),
         (DW_VNNI_BLOCK, schedule_depthwise_vnni),
         (MATMUL_BLOCK, schedule_matmul))


def schedule_function(func):
    """(scheduled PrimFunc, rule name) for one fused function. A kernel rule that fails on an
    unexpected fused function raises for qcc's own kernels; for TVM's matmul it falls back to the
    generic rule."""
    sch = s_tir.Schedule(func)
    for block, rule in RULES:
        if _has_block(sch, block):
            if block != MATMUL_BLOCK:
                rule(sch)
                return sch.mod["main"], block
            try:
                rule(sch)
                return sch.mod["main"], block
            except Exception:  # noqa: BLE001 - an unusual matmul nest: the generic rule below
                sch = s_tir.Schedule(func)
                break
    try:
        schedule_rows(sch)
        return sch.mod["main"], "rows"
    except Exception:  # noqa: BLE001 - not a row-wise function: the generic rule
        sch = s_tir.Schedule(func)
    schedule_generic(sch)
    return sch.mod["main"], "generic"
