"""AffineQuant (Ma et al., 2024, "AffineQuant: affine transformation quantization for large language
models"), restricted to the places where the transform costs nothing at run time.

For a linear layer Y = X W (X [tokens, K] an activation, W [K, N] constant) and any invertible
A [K, K],  X W = (X A^-1)(A W).  A is learned on calibration activations to minimize

    L(A) = || X W - Q_a(X A^-1) Q_w(A W) ||^2

with Q_a the per-tensor uint8 activation quantizer (min / max of X A^-1) and Q_w int8 symmetric per
output column, rounding passed straight through (torch, CPU, Adam). A = diag(d) + M_t * O: the
off-diagonal part O is opened gradually by a band mask M_t (|i - j| <= k_t, k_t growing from 0 to the
block width over the first 60% of the steps), and after every step each row's off-diagonal mass is
capped at 0.9 |d_i|, so A stays STRICTLY DIAGONALLY DOMINANT and hence invertible
(Levy-Desplanques) - the exact inverse is then folded into the graph in float64.

Two sites where A^-1 folds exactly into the producer, so the compiled graph is unchanged in cost:

1. value -> output projection, per attention head (A block-diagonal, one D x D block per head):
   ctx = concat_h softmax(.)_h V_h,  V = h Wv + bv,  ctx W_o + b_o  is unchanged by
       Wv'[:, head] = Wv[:, head] A_h^-1,   bv'[head] = bv[head] A_h^-1,   Wo'[head, :] = A_h Wo[head, :]
   since softmax(.)_h (V_h A_h^-1) = (softmax(.)_h V_h) A_h^-1.
   Pattern: MatMul(ctx, const Wo) with ctx = Reshape(Transpose_{0,2,1,3}(MatMul(P, Transpose_{0,2,1,3}(
   Reshape(Add(MatMul(h, const Wv), const bv)))))), head width D the last dim of the per-head V,
   every intermediate tensor read once.
2. LayerNormalization -> MatMuls (A = diag(a), one shared by Q / K / V): X A^-1 folds into the LN
   (gamma / a, beta / a; a copy where the residual reads the LN output) and A W = diag(a) W - the
   rewrite of passes/smoothing.py with a learned a, initialized from smoothing's best-alpha scale and
   learned on half the sampled rows; kept only if it beats that scale (and identity) on the other half.

Collection (`collect_stats`: a row sample of X per site, from onnxruntime) and application (`apply`:
learn, then rewrite) are separate. Optimization stays cheap: a few hundred rows, `steps` Adam steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from ..initializers import add_initializer
from . import smoothing
from ..statistic_points import collect
from .registry import Pass

ROWS = 256
LN_ROWS = 1024             # LayerNorm sites: half to learn the diagonal, half to validate it
STEPS = 200
DOMINANCE = 0.9            # off-diagonal row mass <= DOMINANCE * |diagonal|
BAND_OPEN = 0.6            # fraction of the steps over which the band mask opens to full width


@dataclass
class HeadSite:
    """value projection (MatMul + bias Add) -> attention -> output projection MatMul."""
    value_mm: ir.Node
    value_add: ir.Node | None
    out_mm: ir.Node
    head_dim: int

    @property
    def tensor(self) -> str:              # X of the loss: the output projection's input
        return self.out_mm.inputs[0].name


def _single(value: ir.Value) -> ir.Node | None:
    """The producer of `value` when `value` is read exactly once and is not a graph output."""
    if value is None or len(value.uses()) != 1 or value.is_graph_output():
        return None
    return value.producer()


def _is(node: ir.Node | None, op: str, perm=None) -> bool:
    if node is None or node.op_type != op or node.domain not in ("", "ai.onnx"):
        return False
    return perm is None or tuple(node.attributes.get_ints("perm", ())) == perm


def _const2d(v: ir.Value | None) -> bool:
    return v is not None and v.const_value is not None and len(v.const_value.shape) == 2


def find_head_sites(model: ir.Model) -> list[HeadSite]:
    sites = []
    for mo in model.graph:
        if not _is(mo, "MatMul") or not _const2d(mo.inputs[1]):
            continue
        k = mo.inputs[1].const_value.shape[0]
        r3 = _single(mo.inputs[0])
        t3 = _single(r3.inputs[0]) if _is(r3, "Reshape") else None
        pv = _single(t3.inputs[0]) if _is(t3, "Transpose", (0, 2, 1, 3)) else None
        if not _is(pv, "MatMul"):
            continue
        t1 = _single(pv.inputs[1])
        r2 = _single(t1.inputs[0]) if _is(t1, "Transpose", (0, 2, 1, 3)) else None
        if not _is(r2, "Reshape"):
            continue
        shape = t1.outputs[0].shape
        d = shape[-1] if shape is not None and shape.rank() == 4 else None
        if not isinstance(d, int) or k % d:
            continue
        src = _single(r2.inputs[0])
        add = None
        if _is(src, "Add"):
            consts = [v for v in src.inputs if v is not None and v.const_value is not None]
            if len(consts) != 1 or tuple(consts[0].const_value.shape) != (k,):
                continue
            add = src
            src = _single(next(v for v in src.inputs if v.const_value is None))
        if not _is(src, "MatMul") or not _const2d(src.inputs[1]) or src.inputs[1].const_value.shape[1] != k:
            continue
        sites.append(HeadSite(src, add, mo, d))
    return sites


def collect_stats(float_model: onnx.ModelProto, sites, feeds, rows: int = ROWS):
    """tensor -> (channel abs-max, a random sample of at most `rows` rows) for every site's X."""
    return collect(float_model, smoothing.statistic_points(sites, rows), feeds)


# ---- learning A ---------------------------------------------------------------------------------
def learn_transform(x: np.ndarray, w: np.ndarray, block: int, steps: int = STEPS, lr: float = 2e-3,
                    init_diag: np.ndarray | None = None, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Block-diagonal A ([K/block, block, block]) minimizing L(A) on rows x [R, K] and weight w [K, N].
    Returns (A, {"loss_identity", "loss"})."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # small matrices: one thread is faster than two on a busy machine
    try:
        return _learn(torch, x, w, block, steps, lr, init_diag, seed)
    finally:
        torch.set_num_threads(threads)


def _learn(torch, x, w, block, steps, lr, init_diag, seed):
    torch.manual_seed(seed)
    k = x.shape[1]
    nb = k // block
    X = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    W = torch.from_numpy(np.ascontiguousarray(w, np.float32))
    Y = X @ W
    d0 = torch.ones(nb, block) if init_diag is None else torch.from_numpy(init_diag.astype(np.float32)).view(nb, block)
    diag = torch.nn.Parameter(d0.clone())
    off = torch.nn.Parameter(torch.zeros(nb, block, block))
    idx = torch.arange(block)
    dist = (idx[:, None] - idx[None, :]).abs()
    eye = torch.eye(block, dtype=torch.bool)

    def transform(band: int) -> torch.Tensor:
        mask = ((dist <= band) & ~eye).to(X.dtype)
        return torch.diag_embed(diag) + off * mask

    def loss_of(a: torch.Tensor) -> torch.Tensor:
        if block == 1:            # diagonal: A^-1 is elementwise
            xa, aw = X / a.reshape(1, k), a.reshape(k, 1) * W
        else:
            xa = torch.einsum("rnb,nbc->rnc", X.view(-1, nb, block), torch.linalg.inv(a)).reshape(-1, k)
            aw = torch.einsum("nbc,ncm->nbm", a, W.view(nb, block, -1)).reshape(k, -1)
        return ((Y - _fq_act(xa) @ _fq_weight(aw)) ** 2).mean()

    with torch.no_grad():
        loss_identity = float(loss_of(torch.eye(block).expand(nb, block, block)))
        loss_init = float(loss_of(transform(0)))
    opt = torch.optim.Adam([diag, off] if block > 1 else [diag], lr=lr)
    best = (loss_init, transform(0).detach().clone())
    for step in range(steps):
        band = min(block - 1, int(block * step / max(1, BAND_OPEN * steps)))
        a = transform(band)
        loss = loss_of(a)
        if loss.item() < best[0]:
            best = (loss.item(), a.detach().clone())
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():        # keep A strictly diagonally dominant: cap each row's off-diagonal mass
            a = transform(band)
            mass = (a - torch.diag_embed(diag)).abs().sum(-1)
            cap = DOMINANCE * diag.abs()
            off.mul_(torch.where(mass > cap, cap / mass.clamp_min(1e-12), torch.ones_like(mass))[..., None])
    with torch.no_grad():
        final = transform(block - 1)
        lf = float(loss_of(final))
        if lf < best[0]:
            best = (lf, final.clone())
    return best[1].numpy().astype(np.float64), {"loss_identity": loss_identity, "loss": best[0]}


def _round_ste(x):
    return x + (x.round() - x).detach()


def _fq_act(x):
    """uint8 asymmetric per-tensor fake quantization on the (detached) min / max of x."""
    import torch

    lo, hi = x.min().detach().clamp(max=0.0), x.max().detach().clamp(min=0.0)
    scale = ((hi - lo) / 255.0).clamp_min(1e-12)
    zp = torch.round(-lo / scale)
    q = torch.clamp(_round_ste(x / scale) + zp, 0, 255)
    return (q - zp) * scale


def _fq_weight(w):
    """int8 symmetric per output column (narrow range), scale on the detached column abs-max."""
    import torch

    scale = (w.detach().abs().amax(dim=0, keepdim=True) / 127.0).clamp_min(1e-12)
    return torch.clamp(_round_ste(w / scale), -127, 127) * scale


def is_strictly_diagonally_dominant(a: np.ndarray) -> bool:
    a = np.abs(np.asarray(a))
    diag = np.diagonal(a, axis1=-2, axis2=-1)
    return bool((diag > a.sum(-1) - diag).all())


# ---- rewrite -------------------------------------------------------------------------------------
def fold_heads(graph: ir.Graph, site: HeadSite, a: np.ndarray) -> None:
    """Wv' = Wv A^-1, bv' = bv A^-1, Wo' = A Wo with A block-diagonal ([H, D, D])."""
    inv = np.linalg.inv(a)
    h, d, _ = a.shape
    wv = site.value_mm.inputs[1].const_value.numpy().astype(np.float64)
    wo = site.out_mm.inputs[1].const_value.numpy().astype(np.float64)
    wv_new = np.einsum("inb,nbc->inc", wv.reshape(wv.shape[0], h, d), inv).reshape(wv.shape)
    wo_new = np.einsum("nbc,ncm->nbm", a, wo.reshape(h, d, -1)).reshape(wo.shape)
    site.value_mm.replace_input_with(1, add_initializer(graph, f"{site.value_mm.name}.weight_affine",
                                                        wv_new.astype(np.float32)))
    site.out_mm.replace_input_with(1, add_initializer(graph, f"{site.out_mm.name}.weight_affine",
                                                      wo_new.astype(np.float32)))
    if site.value_add is not None:
        i = next(i for i, v in enumerate(site.value_add.inputs) if v.const_value is not None)
        bv = site.value_add.inputs[i].const_value.numpy().astype(np.float64)
        bv_new = np.einsum("nb,nbc->nc", bv.reshape(h, d), inv).reshape(bv.shape)
        site.value_add.replace_input_with(i, add_initializer(graph, f"{site.value_add.name}.bias_affine",
                                                             bv_new.astype(np.float32)))


def _sites(model: ir.Model, heads: bool, layernorm: bool) -> tuple[list[HeadSite], list]:
    return (find_head_sites(model) if heads else [],
            smoothing.find_sites(model, duplicate=True)[0] if layernorm else [])


def statistic_points(model: ir.Model, rows: int = ROWS, heads: bool = True, layernorm: bool = True) -> dict:
    """Every site's X: channel abs-max and a random sample of rows (more rows where LN sites learn)."""
    head_sites, ln_sites = _sites(model, heads, layernorm)
    return smoothing.statistic_points([*head_sites, *ln_sites], max(rows, LN_ROWS) if ln_sites else rows)


def apply(model: ir.Model, float_model: onnx.ModelProto, feeds, steps: int | None = None,
          rows: int | None = None, heads: bool = True, layernorm: bool = True, stats: dict | None = None) -> dict:
    """Learn and fold A at every value -> output site (block-diagonal) and LN -> MatMul site (diagonal).
    `steps` / `rows` default to the module's STEPS / ROWS; `stats` (statistic_points, collected) is
    measured here when not given."""
    steps, rows = steps or STEPS, rows or ROWS
    head_sites, ln_sites = _sites(model, heads, layernorm)
    if stats is None:
        stats = collect(float_model, statistic_points(model, rows, heads, layernorm), feeds)
    per_site = []
    for site in head_sites:
        if site.tensor not in stats:
            continue
        x = stats[site.tensor][1][:rows]
        w = site.out_mm.inputs[1].const_value.numpy().astype(np.float32)
        a, info = learn_transform(x, w, site.head_dim, steps)
        if info["loss"] < info["loss_identity"] and is_strictly_diagonally_dominant(a):
            fold_heads(model.graph, site, a)
            per_site.append({"site": site.out_mm.name, "kind": "heads", **info})
    for site in ln_sites:
        if site.tensor not in stats:
            continue
        amax, x = stats[site.tensor]
        weights = [mm.inputs[1].const_value.numpy().astype(np.float32) for mm in site.matmuls]
        w = np.concatenate(weights, axis=1)
        # 384 free scales overfit a few hundred rows: learn on half the rows, from smoothing's best
        # alpha, and keep the learned a only if it also wins on the other half
        train, held = x[0::2], x[1::2]
        alpha, _ = smoothing.choose_alpha(train, amax, w)
        init = smoothing.smoothing_scale(amax, np.abs(w).max(axis=1), 0.5 if alpha is None else alpha)
        # diagonal A over Q|K|V or the FFN input is 3-4x wider than a head site: a quarter of the steps
        a, _ = learn_transform(train, w, 1, max(steps // 4, 1), lr=1e-2, init_diag=init)
        learned = a.reshape(-1).astype(np.float32)
        ref = held @ w
        candidates = {"identity": np.ones_like(init), "init": init}
        if (learned > 0).all():
            candidates["learned"] = learned
        losses = {k: smoothing.quant_loss(held, w, v, ref) for k, v in candidates.items()}
        best = min(losses, key=losses.get)
        if best != "identity":
            smoothing._rewrite(model.graph, site, candidates[best], weights)
            per_site.append({"site": site.ln.name, "kind": "layernorm", "chosen": best,
                             "loss_identity": losses["identity"], "loss": losses[best],
                             "loss_init": losses["init"]})
    total_id = sum(p["loss_identity"] for p in per_site)
    return {"sites": len(per_site), "per_site": per_site,
            "loss_ratio": (sum(p["loss"] for p in per_site) / total_id) if total_id else 1.0}


# ---- registration -------------------------------------------------------------------------------
PASS = Pass(
    name="affinequant", phase="rewrite", order=70,
    summary="learned invertible transform A (block-diagonal per head, diagonal into LayerNorm), A⁻¹ folded into the producer",
    where="value → output projection, LayerNorm → MatMul",
    run=lambda ctx: apply(ctx.model, ctx.float_proto, ctx.calib, stats=ctx.points), needs="torch",
    statistics=lambda ctx: statistic_points(ctx.model),
    describe=lambda s: f"affinequant: {s['sites']} sites, output error {s['loss_ratio']:.3f}x of identity",
    applies=lambda model: bool(find_head_sites(model)),
    reference="Ma et al. 2024, AffineQuant")
