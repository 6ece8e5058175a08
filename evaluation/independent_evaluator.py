"""Generator fidelity judged by an independent evaluator (an FR model that played no part in training,
conditioning or selecting the generator; ``ray_jobs.train_evaluator`` trains one).

The generator's prototypes live in the stage-1 model's space, not the evaluator's, so the reference of a
real identity in the evaluator's space is the evaluator's **class mean of that identity's real training
images** (:func:`real_class_references`). Then, with ``evaluation.generation_fidelity.prototype_fidelity``:

* real-ID fidelity: each image generated from real prototype row r is top-1 correct when its nearest
  class mean (over all real classes) is class r's; ``own_cos`` = cosine to that class mean;
* virtual identities have no reference anywhere: their class consistency / separability
  (``evaluation.properties``, VIGFace eq. 8-9) are reported, raw and as ratios to the real set's.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from evaluation.evaluated_set import EvaluatedSet
from evaluation.generation_fidelity import FidelityInputError, format_fidelity, prototype_fidelity
from evaluation.properties import class_centres, compute_properties


def real_class_references(real_emb: np.ndarray, real_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The evaluator's unit class means [K, d] of the real training images (label k = real prototype row k)."""
    labels = np.asarray(real_labels)
    if labels.shape != (len(real_emb),) or labels.min() < 0 or labels.max() >= num_classes:
        raise FidelityInputError(f"real labels must be [{len(real_emb)}] in [0, {num_classes}), got {labels.shape}")
    return class_centres(np.asarray(real_emb, dtype=np.float32), labels, num_classes)


def consistency_separability(emb: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean class consistency and separability of a labelled set (NaN when it has < 2 classes)."""
    _, contiguous = np.unique(np.asarray(labels), return_inverse=True)
    if contiguous.max(initial=-1) < 1:
        return {"consistency": float("nan"), "separability": float("nan")}
    props = compute_properties(np.asarray(emb, dtype=np.float32), contiguous, None)
    return {"consistency": props.mean("consistency"), "separability": props.mean("separability")}


def independent_fidelity(gen_emb: np.ndarray, proto_rows: np.ndarray, num_real: int, references: np.ndarray,
                         real_props: dict[str, float] | None = None) -> dict[str, Any]:
    """Fidelity of generated images (evaluator embeddings ``gen_emb`` [N, d], prototype row of each) by the
    evaluator: ``real`` = ``prototype_fidelity`` of the real-row images against ``references`` (the
    evaluator's real class means, :func:`real_class_references`; chance top-1 = 1 / K); ``virtual`` =
    consistency / separability of the virtual-row images grouped by row, with ``*_ratio`` to ``real_props``
    (the real set's own consistency / separability by the same evaluator) when given."""
    rows = np.asarray(proto_rows, dtype=np.int64)
    if references.shape[0] != num_real:
        raise FidelityInputError(f"{references.shape[0]} reference class means for {num_real} real prototype rows")
    real = rows < num_real
    out: dict[str, Any] = {"real": {"count": int(real.sum())}, "virtual": {"count": int((~real).sum())}}
    if real.any():
        out["real"] = prototype_fidelity(gen_emb[real], rows[real], references, num_real)["real"]
    if (~real).any():
        virt = consistency_separability(gen_emb[~real], rows[~real])
        for k, v in list(virt.items()):
            if real_props and real_props.get(k):
                virt[f"{k}_ratio"] = v / real_props[k]
        out["virtual"].update(virt)
    return out


def format_independent(summary: dict[str, Any], title: str = "") -> str:
    """Text lines of an :func:`independent_fidelity` summary."""
    lines = [format_fidelity({"real": summary["real"]}, title)] if summary["real"].get("count") else [title]
    v = summary["virtual"]
    if v.get("count"):
        ratios = "".join(f" {k}={v[k]:.2f}" for k in ("consistency_ratio", "separability_ratio") if k in v)
        lines.append(f"virtual  {v['count']:5d} consistency={v['consistency']:.3f} "
                     f"separability={v['separability']:.3f}{ratios}")
    return "\n".join(lines)


def dataset_real_id_fidelity(ds: EvaluatedSet, ref: EvaluatedSet) -> dict[str, Any] | None:
    """Real-ID fidelity of a generated dataset's synthetic rows that carry reference identity names (real-ID
    augmentation): ``prototype_fidelity`` against the evaluator's class means of the reference; None when the
    set has no such rows. Its virtual identities are judged by the dataset table's consistency/separability."""
    index = {name: k for k, name in enumerate(ref.info.identities)}
    rows = ds.synthetic_rows
    ref_class = np.array([index.get(ds.info.identities[int(label)], -1) for label in rows.labels], dtype=np.int64)
    keep = ref_class >= 0
    if not keep.any():
        return None
    references = real_class_references(ref.rows.embeddings, ref.rows.labels, ref.info.num_classes)
    return prototype_fidelity(rows.embeddings[keep], ref_class[keep], references, ref.info.num_classes)["real"]


class FidelityProbe:
    """The evaluator with what every measurement of one generator needs, computed once: the evaluator's class
    means of the real training images (the real-ID references) and the real set's own consistency /
    separability (the virtual figures' yardstick). ``measure(faces, rows)`` -> :func:`independent_fidelity`."""

    def __init__(self, evaluator: Any, real_faces: np.ndarray, real_labels: np.ndarray, num_real: int,
                 batch_size: int = 256) -> None:
        self.evaluator, self.num_real, self.batch_size = evaluator, int(num_real), batch_size
        real_emb = self._embed(real_faces)
        self.references = real_class_references(real_emb, real_labels, self.num_real)
        self.real_props = consistency_separability(real_emb, real_labels)

    def _embed(self, faces: np.ndarray) -> np.ndarray:
        return np.concatenate([self.evaluator.embed(faces[i:i + self.batch_size])[0]
                               for i in range(0, len(faces), self.batch_size)])

    def measure(self, faces: np.ndarray, proto_rows: np.ndarray) -> dict[str, Any]:
        """Fidelity of generated uint8 faces [N, H, W, 3] of prototype ``proto_rows`` [N] by the evaluator."""
        return independent_fidelity(self._embed(faces), proto_rows, self.num_real, self.references, self.real_props)


def flat_fidelity(summary: dict[str, Any], prefix: str = "fidelity") -> dict[str, float]:
    """``{prefix}/{kind}/{figure}`` scalars of an :func:`independent_fidelity` summary (NaNs dropped), for logs."""
    return {f"{prefix}/{kind}/{k}": float(v) for kind, figures in summary.items() for k, v in figures.items()
            if isinstance(v, (int, float)) and v == v}
