"""The fixed class basis of AugGen's label path (``EDM2Config.label_basis_dim``), from an FR model's class prototypes.

Not in EDM2 or AugGen (both learn a one-hot label embedding): a choice of ours for short CPU budgets, where a
one-hot embedding learned from ~8 images per class left the toy generator ignoring its label
(docs/methods_auggen.md). The basis is the target-data FR model's (M_orig's) real class prototypes, so AugGen
still uses nothing but the target data, and the label path stays linear in the class vector (mixed rows
``alpha c_i + beta c_j`` read ``alpha p_i + beta p_j``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from fr.prototypes import Prototypes


class LabelBasisError(ValueError):
    """Prototypes that cannot serve as the class basis of a dataset."""


def label_basis_from_prototypes(protos: Prototypes, identities: Sequence[str], where: str = "prototypes") -> torch.Tensor:
    """The unit real prototypes [num_classes, d] whose row k is the dataset's class k (``identities`` in label
    order); a LabelBasisError when the prototypes hold another set of identities or another order."""
    if protos.num_real != len(identities):
        raise LabelBasisError(f"{where}: {protos.num_real} real prototypes for a dataset of {len(identities)} classes")
    if protos.identities is not None:
        theirs = list(protos.identities[:protos.num_real])
        if theirs != list(identities):
            first = next(k for k, (a, b) in enumerate(zip(theirs, identities)) if a != b)
            raise LabelBasisError(f"{where}: prototype row {first} is {theirs[first]!r} but the dataset's class "
                                  f"{first} is {identities[first]!r}: an FR model of another dataset")
    return torch.nn.functional.normalize(protos.real().float(), dim=1)
