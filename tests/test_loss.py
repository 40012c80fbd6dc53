"""Contrastive losses against direct reference computations (single process and two gloo processes)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cxrtool.train.loss import clip_loss, cxr_clip_loss, false_negative_mask, text_keys


def _unit(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def _feats(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [_unit(n, d, g) for _ in range(4)]


def ref_ce(rows, cols, s, excluded=None):
    """Mean over i of -log softmax_j(s <rows_i, cols_j>)[i], written out term by term."""
    total = 0.0
    for i in range(rows.shape[0]):
        logits = [s * float(rows[i] @ cols[j]) for j in range(cols.shape[0])
                  if j == i or not (excluded and excluded(i, j))]
        own = s * float(rows[i] @ cols[i])
        total += -(own - math.log(sum(math.exp(v) for v in logits)))
    return total / rows.shape[0]


def reference(i1, i2, t1, t2, s, w_icl=1.0, w_tcl=0.5, excluded=None):
    pairs = [(i1, t1), (i2, t1), (i1, t2), (i2, t2)]
    i2t = sum(ref_ce(im, tx, s, excluded) for im, tx in pairs) / 4
    t2i = sum(ref_ce(tx, im, s, excluded) for im, tx in pairs) / 4
    clip = 0.5 * (i2t + t2i)
    icl = 0.5 * (ref_ce(i1, i2, s) + ref_ce(i2, i1, s))
    tcl = 0.5 * (ref_ce(t1, t2, s, excluded) + ref_ce(t2, t1, s, excluded))
    return {"clip": clip, "icl": icl, "tcl": tcl, "total": clip + w_icl * icl + w_tcl * tcl}


def test_every_term_matches_the_formula():
    i1, i2, t1, t2 = _feats()
    s = 14.3
    got = cxr_clip_loss(i1, i2, t1, t2, torch.tensor(s, dtype=torch.float64), 1.0, 0.5)
    want = reference(i1, i2, t1, t2, s)
    for name in ("clip", "icl", "tcl", "total"):
        assert float(getattr(got, name)) == pytest.approx(want[name], rel=1e-10), name


def test_weights_scale_the_terms():
    i1, i2, t1, t2 = _feats(seed=3)
    s = torch.tensor(10.0, dtype=torch.float64)
    got = cxr_clip_loss(i1, i2, t1, t2, s, icl_weight=0.0, tcl_weight=2.0)
    assert float(got.total) == pytest.approx(float(got.clip) + 2.0 * float(got.tcl))


def test_plain_clip_loss_on_one_pair_set():
    img, txt, _, _ = _feats()
    s = 10.0
    want = 0.5 * (ref_ce(img, txt, s) + ref_ce(txt, img, s))
    assert float(clip_loss(img, txt, torch.tensor(s, dtype=torch.float64))) == pytest.approx(want, rel=1e-10)


def test_false_negatives_leave_the_denominators():
    i1, i2, t1, t2 = _feats(seed=1)
    # studies 0 and 3 mean the same (e.g. both "the lungs are clear."); 2 and 5 share one of two section keys
    keys = torch.tensor([[7, 7], [1, 1], [2, 9], [7, 7], [4, 4], [5, 9]])
    same = {(0, 3), (3, 0), (2, 5), (5, 2)}
    s = 12.0
    got = cxr_clip_loss(i1, i2, t1, t2, torch.tensor(s, dtype=torch.float64), 1.0, 0.5, keys=keys)
    want = reference(i1, i2, t1, t2, s, excluded=lambda i, j: (i, j) in same)
    for name in ("clip", "icl", "tcl", "total"):
        assert float(getattr(got, name)) == pytest.approx(want[name], rel=1e-10), name
    plain = cxr_clip_loss(i1, i2, t1, t2, torch.tensor(s, dtype=torch.float64))
    assert float(plain.icl) == pytest.approx(float(got.icl))  # ICL is instance discrimination: unchanged
    assert float(plain.clip) != pytest.approx(float(got.clip))


def test_mask_never_hides_the_positive():
    keys = torch.tensor([[1, 1], [1, 1], [2, 2]])
    mask = false_negative_mask(keys, keys, 0)
    assert mask.tolist() == [[False, True, False], [True, False, False], [False, False, False]]


def test_hard_negatives_enter_image_to_text_only_when_not_the_rows_own_meaning():
    i1, i2, t1, t2 = _feats(seed=2)
    g = torch.Generator().manual_seed(9)
    extra = _unit(2, 8, g)
    keys = torch.tensor([[10, 10], [11, 11], [12, 12], [13, 13], [14, 14], [15, 15]])
    extra_keys = torch.tensor([11, 99])  # the first swapped text means what study 1 says
    s = 9.0
    got = cxr_clip_loss(i1, i2, t1, t2, torch.tensor(s, dtype=torch.float64), 1.0, 0.5, keys=keys,
                        extra_texts=extra, extra_keys=extra_keys)

    def i2t_with_extra(images, texts):
        total = 0.0
        for i in range(6):
            cols = [texts[j] for j in range(6)] + [extra[e] for e in range(2) if int(extra_keys[e]) not in (10 + i,)]
            logits = [s * float(images[i] @ c) for c in cols]
            total += -(s * float(images[i] @ texts[i]) - math.log(sum(math.exp(v) for v in logits)))
        return total / 6

    pairs = [(i1, t1), (i2, t1), (i1, t2), (i2, t2)]
    i2t = sum(i2t_with_extra(im, tx) for im, tx in pairs) / 4
    t2i = sum(ref_ce(tx, im, s) for im, tx in pairs) / 4
    assert float(got.clip) == pytest.approx(0.5 * (i2t + t2i), rel=1e-10)


def test_text_keys_are_stable_and_normalised():
    a, b, c = text_keys(["The lungs are clear.", "the  lungs are   clear.", "Small left effusion."])
    assert a == b != c and a >= 0
    assert text_keys(["x"]) == text_keys(["x"])


# ------------------------------------------------------------------ two processes (gloo), gathered
def _worker(rank: int, world: int, init: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        feats = [f.clone() for f in _feats(n=8, seed=5)]
        keys = torch.tensor([[1, 1], [2, 2], [1, 1], [3, 3], [4, 4], [3, 3], [6, 6], [7, 7]])
        n = 8 // world
        local = [f[rank * n : (rank + 1) * n].clone().requires_grad_(True) for f in feats]
        # ragged hard negatives: rank 0 has two, rank 1 none
        g = torch.Generator().manual_seed(11)
        all_extra = _unit(2, 8, g)
        extra = all_extra.clone().requires_grad_(True) if rank == 0 else all_extra[:0].clone().requires_grad_(True)
        extra_keys = torch.tensor([2, 50]) if rank == 0 else torch.tensor([], dtype=torch.int64)
        terms = cxr_clip_loss(*local, torch.tensor(11.0, dtype=torch.float64), 1.0, 0.5,
                              keys=keys[rank * n : (rank + 1) * n], extra_texts=extra, extra_keys=extra_keys)
        terms.total.backward()
        # plain lists: tensors sent through a queue die with the process that made them
        queue.put((rank, terms.floats(), [t.grad.tolist() for t in local], extra.grad.tolist()))
    finally:
        dist.destroy_process_group()


def test_gathered_loss_and_gradients_equal_the_single_process_batch(tmp_path):
    import torch.multiprocessing as mp

    world = 2
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_worker, args=(r, world, init, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    for _ in range(world):
        rank, values, grads, extra_grad = queue.get(timeout=120)
        results[rank] = (values, [torch.tensor(g, dtype=torch.float64) for g in grads],
                         torch.tensor(extra_grad, dtype=torch.float64))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    feats = [f.clone().requires_grad_(True) for f in _feats(n=8, seed=5)]
    keys = torch.tensor([[1, 1], [2, 2], [1, 1], [3, 3], [4, 4], [3, 3], [6, 6], [7, 7]])
    extra = _unit(2, 8, torch.Generator().manual_seed(11)).requires_grad_(True)
    full = cxr_clip_loss(*feats, torch.tensor(11.0, dtype=torch.float64), 1.0, 0.5, keys=keys,
                         extra_texts=extra, extra_keys=torch.tensor([2, 50]))
    full.total.backward()
    for name, value in full.floats().items():  # the mean over ranks is the whole batch's loss
        assert sum(results[r][0][name] for r in range(world)) / world == pytest.approx(value, rel=1e-10), name
    for k in range(4):  # DDP averages gradients over ranks: grad / world is the whole batch's gradient
        got = torch.cat([results[r][1][k] for r in range(world)]) / world
        assert torch.allclose(got, feats[k].grad, rtol=1e-9, atol=1e-12), k
    assert torch.allclose(results[0][2] / world, extra.grad, rtol=1e-9, atol=1e-12)


def test_side_term_is_a_two_way_choice_between_own_and_swapped_text():
    i1, i2, t1, t2 = _feats(seed=4)
    swapped = _unit(2, 8, torch.Generator().manual_seed(5))
    rows = torch.tensor([1, 4])
    s = 10.0
    got = cxr_clip_loss(i1, i2, t1, t2, torch.tensor(s, dtype=torch.float64), 1.0, 0.5, extra_texts=swapped,
                        extra_keys=torch.tensor([100, 101]), extra_rows=rows, side_weight=2.0)

    def two_way(img, own, other):
        a, b = s * float(img @ own), s * float(img @ other)
        return -(a - math.log(math.exp(a) + math.exp(b)))

    want = sum(two_way(im[r], t1[r], swapped[e]) for im in (i1, i2) for e, r in enumerate(rows.tolist())) / 4
    assert float(got.side) == pytest.approx(want, rel=1e-10)
    assert float(got.total) == pytest.approx(float(got.clip) + float(got.icl) + 0.5 * float(got.tcl) + 2.0 * want)
    plain = cxr_clip_loss(i1, i2, t1, t2, torch.tensor(s, dtype=torch.float64))
    assert plain.side is None and plain.floats()["side"] == 0.0
