"""Prototype export: round trip, overwrite guard, mismatch errors."""
import json

import pytest
import torch

from fr.prototypes import PrototypeFileError, load_prototypes, save_prototypes


def test_round_trip(tmp_path):
    w = torch.randn(5, 4, dtype=torch.float64)
    save_prototypes(tmp_path / "p", w, 3, 2, identities=["a", "b", "c"], extra={"seed": 7})
    p = load_prototypes(tmp_path / "p")
    assert p.weight.dtype == torch.float32
    torch.testing.assert_close(p.weight, w.float())
    torch.testing.assert_close(p.real(), w[:3].float())
    torch.testing.assert_close(p.virtual(), w[3:].float())
    assert (p.num_real, p.num_virtual, p.embedding_size) == (3, 2, 4)
    assert p.identities == ["a", "b", "c"] and p.extra == {"seed": 7}


def test_refuses_overwrite(tmp_path):
    save_prototypes(tmp_path / "p", torch.zeros(2, 3), 2, 0)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_prototypes(tmp_path / "p", torch.ones(2, 3), 2, 0)
    save_prototypes(tmp_path / "p", torch.ones(2, 3), 2, 0, overwrite=True)
    assert load_prototypes(tmp_path / "p").weight.sum() == 6


def test_mismatch_errors(tmp_path):
    with pytest.raises(ValueError, match="must equal the 4 rows"):
        save_prototypes(tmp_path / "bad", torch.zeros(4, 3), 2, 1)
    with pytest.raises(ValueError, match="1 identities for 2"):
        save_prototypes(tmp_path / "bad", torch.zeros(4, 3), 2, 2, identities=["x"])
    save_prototypes(tmp_path / "p", torch.zeros(4, 3), 2, 2)
    meta_path = tmp_path / "p.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "num_virtual": 5}))
    with pytest.raises(PrototypeFileError, match=r"num_virtual \(5\) must equal the 4 rows"):
        load_prototypes(tmp_path / "p")
    meta_path.write_text(json.dumps({**meta, "embedding_size": 8}))
    with pytest.raises(PrototypeFileError, match="embedding_size 8 != tensor width 3"):
        load_prototypes(tmp_path / "p")
    with pytest.raises(PrototypeFileError, match="not found"):
        load_prototypes(tmp_path / "missing")
