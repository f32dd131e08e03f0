"""Weight diffs as exact CP tensors, and save / load round trips."""

import json

import pytest
import torch

from decomp import (
    DecompError,
    bilinear_cp,
    component_readouts,
    cp_als,
    cp_to_dense,
    eigendecompose,
    load_cp,
    load_eigen,
    save_cp,
    save_eigen,
    weight_diff_cp,
)

F64 = torch.float64


def layer(d=6, h=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    w, v, p = (torch.randn(*s, generator=g, dtype=F64) for s in [(h, d), (h, d), (d, h)])
    return (w, v, p), bilinear_cp(w, v, p)


def test_weight_diff_equals_dense_difference():
    (w0, v0, p0), base = layer()
    (w1, v1, p1), ft = layer(h=5, seed=1)
    diff = weight_diff_cp(ft, base)
    assert diff.rank == 13
    torch.testing.assert_close(diff.factors[0], torch.cat([p1, -p0], dim=1))
    torch.testing.assert_close(diff.factors[1], torch.cat([w1.T, w0.T], dim=1))
    torch.testing.assert_close(diff.factors[2], torch.cat([v1.T, v0.T], dim=1))
    torch.testing.assert_close(cp_to_dense(diff), cp_to_dense(ft) - cp_to_dense(base))


def test_compressed_diff_reads_tokens():
    _, base = layer(d=6, h=8)
    (w, v, p), _ = layer(d=6, h=8)
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(6, 1, generator=g, dtype=F64), torch.randn(1, 6, generator=g, dtype=F64)
    ft = bilinear_cp(torch.cat([w, b]), torch.cat([v, b]), torch.cat([p, a], dim=1))  # base + one new unit
    diff = weight_diff_cp(ft, base)
    w_e, w_u = torch.randn(20, 6, dtype=F64), torch.randn(20, 6, dtype=F64)
    als = cp_als(diff, 1, n_iter_max=200, tol=0)
    components = component_readouts(als.cp, w_e, w_u, n=1, k=3)
    # the diff is exactly rank one; the implicit error (as parafac's) bottoms out near sqrt(machine eps)
    assert als.rel_error < 1e-6
    dense = cp_to_dense(diff)
    assert float((dense - cp_to_dense(als.cp)).norm() / dense.norm()) < 1e-10
    comp = components[0]
    scores = w_u @ als.cp.factors[0][:, 0]
    assert comp.output.positive[0].token == int(scores.argmax())
    assert len(comp.inputs) == 2 and len(comp.inputs[0].positive) == 3


def test_diff_shape_mismatch():
    _, base = layer(d=6)
    _, other = layer(d=5)
    with pytest.raises(DecompError, match="differ in shape"):
        weight_diff_cp(other, base)


def test_save_load_cp_round_trip(tmp_path):
    _, cp = layer()
    res = cp_als(cp, 3, n_iter_max=4, tol=0)
    path = tmp_path / "sub" / "layer0.safetensors"
    meta = {"layer": 0, "rel_error": res.rel_error, "errors": res.errors, "note": "ünïcode"}
    save_cp(path, res.cp, meta)
    loaded, loaded_meta = load_cp(path)
    assert loaded_meta == meta
    torch.testing.assert_close(loaded.weights, res.cp.weights, rtol=0, atol=0)
    for a, b in zip(loaded.factors, res.cp.factors, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sorted(p.name for p in path.parent.iterdir()) == ["layer0.json", "layer0.safetensors"]
    header = json.loads((tmp_path / "sub" / "layer0.json").read_text())
    assert header["kind"] == "cp" and header["rank"] == 3 and header["shape"] == [6, 6, 6]


def test_save_load_eigen_round_trip(tmp_path):
    _, cp = layer()
    eig = eigendecompose(cp, torch.randn(2, 6, dtype=F64), k=3)
    save_eigen(tmp_path / "eig.safetensors", eig, {"tokens": [1, 2]})
    loaded, meta = load_eigen(tmp_path / "eig.safetensors")
    assert meta == {"tokens": [1, 2]}
    for name in ("values", "vectors", "frobenius_sq"):
        assert torch.equal(getattr(loaded, name), getattr(eig, name))


def test_io_bad_inputs(tmp_path):
    _, cp = layer()
    with pytest.raises(DecompError, match="JSON-serialisable"):
        save_cp(tmp_path / "a.safetensors", cp, {"x": object()})
    assert not list(tmp_path.iterdir())  # nothing written
    with pytest.raises(DecompError, match=".safetensors"):
        save_cp(tmp_path / "a.pt", cp)
    with pytest.raises(DecompError, match="not found"):
        load_cp(tmp_path / "missing.safetensors")
    save_cp(tmp_path / "a.safetensors", cp)
    with pytest.raises(DecompError, match="expected 'eigen'"):
        load_eigen(tmp_path / "a.safetensors")
    (tmp_path / "a.safetensors").write_bytes(b"garbage")
    with pytest.raises(DecompError, match="not a readable safetensors"):
        load_cp(tmp_path / "a.safetensors")
