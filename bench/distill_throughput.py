"""SynthDistill throughput and model size: generator images/s, the student step in-process with the
generator in the loop vs on pre-generated images (is generation the bottleneck?), and TinyFaR
FLOPs/params beside the paper's Table 1.

    python bench/distill_throughput.py [--batch 64] [--iters 3] [--student-input 56] [--threads 2]

Rows (CPU, one process, ``--threads`` torch threads):

* ``toy generator``: ``ToyLatentGenerator.synthesize`` (render + JPEG + resize to 112), images/s;
* ``teacher``: a randomly initialised 48 px IResNet-tiny (the tiny preset's stage-1 architecture);
* ``kd iteration (generator in loop)``: one ``KDStep`` iteration in ``dynamic_w`` (2 batches), images/s,
  with the generate / teacher / student split the step records;
* ``kd iteration (pre-generated)``: the same step fed pre-generated step-1 images and teacher embeddings
  (what a Ray Data stream would hand the worker; the re-sampled batch is still generated in-process).

This bench measures in one process the upper bound a stream could give (the pre-generated row); the
Ray Data stream itself on Ray Train, side by side with the in-worker source: ``bench/distill_stream.py``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import REPO_ROOT, format_table, machine_info, write_json  # noqa: E402
from distill.kd_step import KDStep, Step1Batch  # noqa: E402
from distill.students import PAPER_TABLE1, build_student, complexity  # noqa: E402
from distill.teachers import EmbedderTeacher  # noqa: E402
from distill.toy_generator import ToyLatentGenerator  # noqa: E402
from fr.backbones import build_backbone  # noqa: E402
from fr.face_embedder import FaceEmbedder  # noqa: E402


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--student-input", type=int, default=56)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "distill_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    sizes = []
    for v in "abc":
        c = complexity(build_student(v))
        sizes.append({"model": f"TinyFaR-{v.upper()} @112", "mflops": c["mflops"], "mparams": c["mparams"],
                      "paper_mflops": PAPER_TABLE1[v][0], "paper_mparams": PAPER_TABLE1[v][1]})
    c = complexity(build_student("c", input_size=args.student_input), args.student_input)
    sizes.append({"model": f"TinyFaR-C@{args.student_input}px (toy)", "mflops": c["mflops"], "mparams": c["mparams"]})
    print(format_table(sizes, [("model", "student", str), ("mflops", "MFLOPs", lambda x: f"{x:.1f}"),
                               ("paper_mflops", "paper MFLOPs", lambda x: f"{x:.1f}"),
                               ("mparams", "M params", lambda x: f"{x:.2f}"),
                               ("paper_mparams", "paper M params", lambda x: f"{x:.1f}")]))

    gen = ToyLatentGenerator()
    teacher = EmbedderTeacher(FaceEmbedder(build_backbone("iresnet_tiny", base_width=16, layers=[1, 1, 1, 1],
                                                          input_size=48, auto_resize=True), flip=False))
    w = gen.to_w(gen.sample_latents(args.batch, 0))
    images = gen.synthesize(w)
    rows = [{"what": "toy generator", "s": _timed(lambda: gen.synthesize(w), args.iters), "n": args.batch},
            {"what": "teacher (48px IResNet-tiny)", "s": _timed(lambda: teacher(images), args.iters), "n": args.batch}]
    student = build_student("c", input_size=args.student_input)
    kd = KDStep(student, teacher, gen, torch.optim.Adam(student.parameters(), 1e-3), "dynamic_w", 1.0)
    batches = [Step1Batch(z=gen.sample_latents(args.batch, i), noise_seed=i) for i in range(args.iters + 1)]
    it = iter(batches)
    kd.times = dict.fromkeys(kd.times, 0.0)
    s_loop = _timed(lambda: kd(next(it)), args.iters)
    split_loop = {k: v / (args.iters + 1) for k, v in kd.times.items()}
    pre = []
    for b in batches:
        x = gen.synthesize(gen.to_w(b.z))
        pre.append(Step1Batch(z=b.z, noise_seed=b.noise_seed, images=x, e_teacher=teacher(x)))
    it = iter(pre)
    kd.times = dict.fromkeys(kd.times, 0.0)
    s_pre = _timed(lambda: kd(next(it)), args.iters)
    split_pre = {k: v / (args.iters + 1) for k, v in kd.times.items()}
    rows += [{"what": "kd iteration, generator in loop", "s": s_loop, "n": 2 * args.batch, **split_loop},
             {"what": "kd iteration, step-1 pre-generated", "s": s_pre, "n": 2 * args.batch, **split_pre}]
    for r in rows:
        r["images_per_s"] = r["n"] / r["s"]
    fmt = lambda x: f"{x:.3f}"  # noqa: E731
    print(format_table(rows, [("what", "part", str), ("images_per_s", "images/s", lambda x: f"{x:.1f}"),
                              ("s", "s/call", fmt), ("generate_s", "generate s", fmt), ("teacher_s", "teacher s", fmt),
                              ("student_s", "student s", fmt)]))
    ratio = rows[2]["images_per_s"] / rows[3]["images_per_s"]
    print(f"in-loop / pre-generated images/s: {ratio:.2f}")
    write_json(args.out, {"machine": machine_info(), "args": vars(args), "sizes": sizes, "throughput": rows,
                          "in_loop_over_pregenerated": ratio})


if __name__ == "__main__":
    main()
