"""GIF identity tokenization: code vectors, hypersphere homogenisation, hierarchical codes, token head.

Pipeline (no Ray here): :mod:`fr.gif.code_vectors` (one vector per identity) ->
:mod:`fr.gif.homogenise` (spread on the sphere, similarity order kept) -> :mod:`fr.gif.hier_codes`
(tree-structured integer codes ``[N, l]``) -> :mod:`fr.gif.token_head` (the FR head predicting the tokens,
loss weighted by :mod:`fr.gif.lambdas`). ``ray_jobs.build_codes`` wires the first three to a job.
"""
